// CCTV: this booth's NVR cameras (add, test, remove) and the clip requests (create for a time
// range and optionally a guest, trigger, live status every 3 s while shown, clip preview).
// The API and its semantics: web/routes/cctv.py. The tab's content is made from
// <template id="cctv-template"> when first shown and removed at logout (resetCctv).
import { $, el, toast } from "../common.js";
import { call } from "./session.js";
import { data, poller, showError } from "./ui.js";

const PAGE = 20;
const POLL_MS = 3000;
const STATUS_LABELS = {
  PENDING: "Pending",
  READY_FOR_BATCH: "Ready",
  PROCESSING: "Cutting…",
  CLIP_GENERATED: "Clip ready",
  FAILED: "Failed",
};
/** Statuses that change on their own (the poll follows rows in them beyond the first page). */
const MOVING = new Set(["PENDING", "READY_FOR_BATCH", "PROCESSING"]);

let ctx = null;
let cameras = [];            // this booth's cameras
const names = new Map();     // every known camera's id → name (requests may be of another booth)
let cursor = null;
let loading = false;
let gen = 0;                 // bumped by every reload: an older poll's answer is dropped
let epoch = 0;               // bumped at logout: answers for the previous operator are dropped
let prefilled = false;
let camerasLoaded = false;
let built = false;

// --- formatting -------------------------------------------------------------------------------
const pad = (n) => String(n).padStart(2, "0");

function offsetText(minutes) {
  if (minutes === null || minutes === undefined) return "";
  const sign = minutes < 0 ? "−" : "+";
  const abs = Math.abs(minutes);
  return `UTC${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

const clock = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const day = (d) => d.toLocaleDateString([], { day: "numeric", month: "short" });

/** "30 s", "5 min 10 s", "1 h 5 min" (no-break spaces: a duration never splits across lines). */
function spanText(seconds) {
  const s = Math.round(seconds);
  const text = s < 60 ? `${s} s`
    : s < 3600 ? `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`
      : `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
  return text.replace(/ /g, "\u00a0");
}

function rangeText(startIso, endIso) {
  const start = new Date(startIso);
  const end = new Date(endIso);
  const same = start.toDateString() === end.toDateString();
  return `${day(start)}, ${clock(start)} – ${same ? "" : `${day(end)}, `}${clock(end)}` +
    ` (${spanText((end - start) / 1000)})`;
}

function playTime(seconds) {
  const s = Math.round(seconds || 0);
  return s >= 3600
    ? `${Math.floor(s / 3600)}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`
    : `${Math.floor(s / 60)}:${pad(s % 60)}`;
}

function sizeText(bytes) {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

/** The NVR's own wall clock as it said it ("2024-05-01T17:00:05+07:00" → "17:00:05, 2024-05-01"). */
function nvrClock(iso) {
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso || "");
  return m ? `${m[2]} on ${m[1]}` : iso;
}

/** The instant the NVR's clock says (ms): ``localTime`` is its naive wall clock, at
 * ``utcOffsetMinutes`` (or carries its own offset). */
function nvrInstant({ localTime, utcOffsetMinutes }) {
  if (/(?:Z|[+-]\d{2}:?\d{2})$/.test(localTime || "")) return Date.parse(localTime);
  return Date.parse(`${localTime}Z`) - (utcOffsetMinutes || 0) * 60_000;
}

/** A datetime-local value for `date` in this browser's zone (seconds included). */
function toLocalInput(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** A datetime-local value → ISO 8601 with this browser's offset ("…T10:00:05+07:00"), or null. */
function localInputToIso(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value || "");
  if (!m) return null;
  const date = new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  if (Number.isNaN(date.getTime())) return null;
  const offset = -date.getTimezoneOffset();
  const sign = offset < 0 ? "-" : "+";
  const abs = Math.abs(offset);
  return { date, iso: `${toLocalInput(date)}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}` };
}

function invalid(input, error, message) {
  showError(error, message);
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

// --- cameras ----------------------------------------------------------------------------------
function modeText(camera) {
  if (camera.timeMode === "utc") return "NVR times are UTC";
  return camera.utcOffsetMinutes === null || camera.utcOffsetMinutes === undefined
    ? "Local wall-clock, offset not known yet (press Test)"
    : `Local wall-clock, ${offsetText(camera.utcOffsetMinutes)} at the last test`;
}

function cameraRow(camera) {
  const result = el("p", { class: "camera-result", role: "status" });
  const mode = el("span", { class: "camera-mode" }, modeText(camera));
  const test = el("button", {
    type: "button", class: "button secondary small", "aria-label": `Test camera ${camera.name}`,
  }, "Test");
  const remove = el("button", {
    type: "button", class: "button secondary small", "aria-label": `Remove camera ${camera.name}`,
  }, "Remove");
  const yes = el("button", { type: "button", class: "button danger small" }, "Yes, remove");
  const keep = el("button", { type: "button", class: "button secondary small" }, "Keep");
  const confirm = el("div", { class: "camera-confirm", hidden: true, role: "group",
    "aria-label": `Remove camera ${camera.name}?` },
  el("span", {}, `Remove “${camera.name}”? Its clips stay.`), yes, keep);
  const actions = el("div", { class: "camera-actions" }, test, remove);
  const row = el("li", { class: "camera-row", dataset: { cameraId: camera.id } },
    el("div", { class: "camera-main" },
      el("div", { class: "camera-name" }, camera.name),
      el("div", { class: "camera-meta" },
        el("span", { class: "camera-url" }, camera.baseUrl),
        el("span", {}, `track ${camera.trackId}`),
        el("span", {}, `user ${camera.username}`)),
      el("div", { class: "camera-meta" }, mode)),
    actions, confirm, result);

  test.addEventListener("click", async () => {
    test.disabled = true;
    test.textContent = "Testing…";
    result.className = "camera-result";
    result.textContent = "Asking the NVR for its time…";
    try {
      const answer = await call(`/cameras/${encodeURIComponent(camera.id)}/test`, { method: "POST" });
      const drift = Math.round((nvrInstant(answer) - Date.now()) / 1000);
      const driftText = Number.isFinite(drift) && Math.abs(drift) >= 5
        ? ` Its clock is ${spanText(Math.abs(drift))} ${drift > 0 ? "ahead of" : "behind"} this device.`
        : "";
      result.className = "camera-result ok";
      result.textContent = `Connected. NVR time ${nvrClock(answer.localTime)}` +
        ` (${offsetText(answer.utcOffsetMinutes)}), time zone ${answer.timeZone || "not given"}.${driftText}`;
      camera.utcOffsetMinutes = answer.utcOffsetMinutes;
      mode.textContent = modeText(camera);
    } catch (err) {
      result.className = "camera-result bad";
      const headline = { nvr_auth_failed: "The NVR refused the username or password.",
        nvr_unavailable: "Can't reach the NVR." }[err.code];
      result.replaceChildren(...(headline
        ? [el("strong", {}, headline), el("span", { class: "camera-result-detail" }, err.message)]
        : [el("strong", {}, err.message)]));
    } finally {
      test.disabled = false;
      test.textContent = "Test";
    }
  });
  const ask = (on) => {
    confirm.hidden = !on;
    actions.hidden = on;
    (on ? yes : remove).focus();
  };
  remove.addEventListener("click", () => ask(true));
  keep.addEventListener("click", () => ask(false));
  confirm.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); ask(false); } });
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    yes.textContent = "Removing…";
    try {
      await call(`/cameras/${encodeURIComponent(camera.id)}`, { method: "DELETE" });
    } catch (err) {
      if (err.status !== 404) {
        yes.disabled = false;
        yes.textContent = "Yes, remove";
        result.className = "camera-result bad";
        result.textContent = `Not removed: ${err.message}`;
        return;
      }
    }
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    cameras = cameras.filter((c) => c.id !== camera.id);
    renderCameraOptions();
    $("#cameras-empty").hidden = cameras.length > 0;
    if (!cameras.length) $("#camera-add").open = true;
    toast(`Camera “${camera.name}” removed.`);
    const target = next ? next.querySelector("button") : $("#camera-name");
    if (target) target.focus();
  });
  return row;
}

function renderCameraOptions() {
  const select = $("#clip-camera");
  const chosen = select.value;
  if (cameras.length) {
    select.replaceChildren(...cameras.map((c) => el("option", { value: c.id }, c.name)));
    if (cameras.some((c) => c.id === chosen)) select.value = chosen;
  } else {
    select.replaceChildren(el("option", { value: "" }, "Add a camera first"));
  }
  select.disabled = cameras.length === 0;
  $("#clip-submit").disabled = cameras.length === 0;
}

async function loadCameras() {
  showError($("#cameras-error"), "");
  const mine = epoch;
  try {
    const body = await call("/cameras");
    if (mine !== epoch) return;
    for (const c of body.cameras) names.set(c.id, c.name);
    cameras = body.cameras.filter((c) => c.boothId === data.boothId);
  } catch (err) {
    if (mine === epoch) showError($("#cameras-error"), err.message);
    return;
  }
  // Rows of cameras already shown are kept (with the result of their last Test).
  const list = $("#camera-list");
  const shown = new Map([...list.children].map((li) => [li.dataset.cameraId, li]));
  list.replaceChildren(...cameras.map((c) => shown.get(c.id) || cameraRow(c)));
  $("#cameras-empty").hidden = cameras.length > 0;
  if (!camerasLoaded) $("#camera-add").open = cameras.length === 0;  // then the operator's choice
  camerasLoaded = true;
  renderCameraOptions();
}

async function addCamera(e) {
  e.preventDefault();
  const error = $("#camera-form-error");
  showError(error, "");
  const form = $("#camera-form");
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const url = $("#camera-url");
  const track = $("#camera-track");
  const username = $("#camera-username");
  const password = $("#camera-password");
  const baseUrl = url.value.trim();
  if (!/^https?:\/\/\S+$/i.test(baseUrl)) {
    invalid(url, error, "Enter the NVR's address, starting with http:// or https://.");
    return;
  }
  const trackId = Number(track.value);
  if (!Number.isInteger(trackId) || trackId < 1 || trackId > 99999) {
    invalid(track, error, "The track id is a number like 101 (channel × 100 + stream).");
    return;
  }
  if (!username.value.trim()) { invalid(username, error, "Enter the NVR's username."); return; }
  if (!password.value) { invalid(password, error, "Enter the NVR's password."); return; }
  const body = {
    boothId: data.boothId, baseUrl, trackId, username: username.value.trim(),
    password: password.value, timeMode: $("#camera-time-mode").value,
  };
  const name = $("#camera-name").value.trim();
  if (name) body.name = name;
  const button = $("#camera-submit");
  button.disabled = true;
  button.textContent = "Adding…";
  try {
    const camera = await call("/cameras", { method: "POST", body });
    form.reset();
    toast(`Camera “${camera.name}” added. Press Test to check it.`);
    await loadCameras();
    const added = $(`#camera-list li[data-camera-id="${camera.id}"] button`);
    if (added) added.focus();
  } catch (err) {
    showError(error, err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Add camera";
    password.value = "";  // never kept in the page after trying
  }
}

// --- clip requests ----------------------------------------------------------------------------
function triggerable(item) {
  return item.status === "READY_FOR_BATCH" || item.status === "FAILED" ||
    (item.status === "PENDING" && Date.parse(item.endTime) <= Date.now());
}

function fingerprint(item) {
  return [item.status, item.failureReason, item.attempts, item.clip ? item.clip.id : "",
    triggerable(item), names.get(item.cameraId) || ""].join("|");
}

function chip(status) {
  return el("span", { class: "chip", dataset: { status } }, STATUS_LABELS[status] || status);
}

function detailText(item) {
  switch (item.status) {
    case "PENDING":
      return Date.parse(item.endTime) > Date.now()
        ? `Recording until ${clock(new Date(item.endTime))}.`
        : `Waits until ${clock(new Date(item.readyAt))} for the NVR to finish writing (or Trigger now).`;
    case "READY_FOR_BATCH": return "Waiting for the next batch (or Trigger now).";
    case "PROCESSING": return `Fetching the recordings and cutting (attempt ${item.attempts}).`;
    case "FAILED": return item.failureReason || "Failed.";
    case "CLIP_GENERATED":
      return item.clip ? `Made at ${clock(new Date(item.clip.createdAt))}.` : "Clip ready.";
    default: return "";
  }
}

function preview(item) {
  const clip = item.clip;
  if (!clip) return null;
  return el("figure", { class: "clip-preview" },
    el("video", {
      controls: true, preload: "none", playsinline: true, poster: clip.posterUrl || null,
      src: clip.url, "aria-label": `Clip of request #${item.id}`,
    }),
    el("figcaption", {},
      el("span", {}, `${playTime(clip.durationSeconds)} · ${sizeText(clip.sizeBytes)}`),
      el("a", { href: clip.url, download: `clip-${item.id}.mp4` }, "Download")));
}

function requestRow(item, { fresh = false } = {}) {
  const camera = names.get(item.cameraId) || "Removed camera";
  const origin = item.boothSessionId ? "Booth session (automatic)"
    : item.sessionId ? "For a guest" : "Manual";
  const note = el("p", { class: "clip-note", role: "status" });
  const trigger = triggerable(item)
    ? el("button", {
      type: "button", class: "button secondary small clip-trigger",
      "aria-label": `Trigger clip request #${item.id}`,
    }, "Trigger")
    : null;
  const row = el("li", {
    class: fresh ? "clip-row fresh" : "clip-row",
    dataset: { requestId: item.id, status: item.status },
  },
  el("div", { class: "clip-main" },
    el("div", { class: "clip-line" },
      el("span", { class: "clip-who" }, `#${item.id} · ${camera}`),
      chip(item.status)),
    el("div", { class: "clip-meta" }, `${rangeText(item.startTime, item.endTime)} · ${origin}`),
    el("div", { class: item.status === "FAILED" ? "clip-detail bad" : "clip-detail" }, detailText(item))),
  trigger,
  note,
  item.status === "CLIP_GENERATED" ? preview(item) : null);
  row.dataset.fp = fingerprint(item);
  if (trigger) {
    trigger.addEventListener("click", async () => {
      trigger.disabled = true;
      trigger.textContent = "Triggering…";
      note.className = "clip-note";
      note.textContent = "";
      try {
        const after = await call(`/clip-requests/${item.id}/trigger`, { method: "POST" });
        const fresh = replaceRow(row, after, { force: true });
        const again = fresh.querySelector(".clip-note");
        again.textContent = "Triggered: the clip is cut now.";
        again.className = "clip-note ok";
        const button = fresh.querySelector("button");
        if (button) button.focus();
        live.kick();
      } catch (err) {
        trigger.disabled = false;
        trigger.textContent = "Trigger";
        note.className = "clip-note bad";
        note.textContent = err.code === "not_ready" ? `Not triggered: ${err.message}.` : err.message;
        note.setAttribute("role", "alert");
      }
    });
  }
  return row;
}

/** Replace `old` with a row for `item` if anything shown changed (a clip's video stays put). */
function replaceRow(old, item, { force = false } = {}) {
  if (!force && old.dataset.fp === fingerprint(item)) return old;
  const hadFocus = old.contains(document.activeElement);
  const row = requestRow(item);
  old.replaceWith(row);
  if (hadFocus) { const b = row.querySelector("button"); if (b) b.focus(); }
  return row;
}

function appendItems(items) {
  const list = $("#clip-list");
  for (const item of items) {
    if (list.querySelector(`li[data-request-id="${item.id}"]`)) continue;
    list.append(requestRow(item));
  }
}

function renderFooter() {
  $("#clips-empty").hidden = loading || $("#clip-list").children.length > 0;
  $("#clips-more").hidden = !cursor;
}

const listPath = (extra = {}) => `/clip-requests?${new URLSearchParams({ limit: String(PAGE), ...extra })}`;

async function reload() {
  showError($("#clips-error"), "");
  loading = true;
  const mine = ++gen;
  try {
    const page = await call(listPath());
    if (mine !== gen) return;
    $("#clip-list").replaceChildren();
    appendItems(page.items);
    cursor = page.nextBefore;
  } catch (err) {
    if (mine === gen) showError($("#clips-error"), err.message);
  } finally {
    if (mine === gen) { loading = false; renderFooter(); }
  }
}

async function more() {
  if (!cursor || loading) return;
  const button = $("#clips-more");
  button.disabled = true;
  button.textContent = "Loading…";
  const mine = gen;
  try {
    const page = await call(listPath({ before: String(cursor) }));
    if (mine !== gen) return;
    appendItems(page.items);
    cursor = page.nextBefore;
  } catch (err) {
    if (mine === gen) showError($("#clips-error"), err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Load more";
    if (mine === gen) renderFooter();
  }
}

/** Every 3 s while shown: the first page again (new requests on top), and older moving rows. */
const live = poller(async () => {
  if (loading || !built) return;
  const list = $("#clip-list");
  const mine = gen;
  const page = await call(listPath());
  if (mine !== gen || loading) return;
  showError($("#clips-error"), "");
  const fresh = [];
  for (const item of page.items) {
    const old = list.querySelector(`li[data-request-id="${item.id}"]`);
    if (old) replaceRow(old, item);
    else if (!list.children.length || item.id > Number(list.firstElementChild.dataset.requestId)) {
      fresh.push(requestRow(item, { fresh: true }));
    }
  }
  if (fresh.length) list.prepend(...fresh);
  const onFirst = new Set(page.items.map((i) => String(i.id)));
  const older = [...list.querySelectorAll("li.clip-row")]
    .filter((li) => !onFirst.has(li.dataset.requestId) && MOVING.has(li.dataset.status)).slice(0, 10);
  for (const li of older) {
    const item = await call(`/clip-requests/${li.dataset.requestId}`);
    if (mine !== gen) return;
    replaceRow(li, item);
  }
  renderFooter();
}, POLL_MS);

function prefill() {
  if (prefilled) return;
  prefilled = true;
  // The last full minute that ended over a minute ago: ready to cut at once.
  const end = new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000);
  const start = new Date(end.getTime() - 30_000);
  if (!$("#clip-start").value) $("#clip-start").value = toLocalInput(start);
  if (!$("#clip-end").value) $("#clip-end").value = toLocalInput(end);
}

async function createRequest(e) {
  e.preventDefault();
  const error = $("#clip-form-error");
  showError(error, "");
  const form = $("#clip-form");
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const cameraId = $("#clip-camera").value;
  if (!cameraId) {
    $("#camera-add").open = true;
    invalid($("#camera-url"), error, "Add a camera first.");
    return;
  }
  const start = localInputToIso($("#clip-start").value);
  if (!start) { invalid($("#clip-start"), error, "Choose when the clip starts."); return; }
  const end = localInputToIso($("#clip-end").value);
  if (!end) { invalid($("#clip-end"), error, "Choose when the clip ends."); return; }
  if (end.date <= start.date) { invalid($("#clip-end"), error, "The end must be after the start."); return; }
  const body = { cameraId, start: start.iso, end: end.iso };
  const button = $("#clip-submit");
  button.disabled = true;
  button.textContent = "Requesting…";
  try {
    const code = $("#clip-code").value.replace(/[\s-]/g, "").toUpperCase();
    if (code) {
      const slug = ctx.eventSlug();
      try {
        const found = await call(`/sessions/${encodeURIComponent(code)}?eventId=${encodeURIComponent(slug)}`);
        body.sessionId = found.sessionId;
        $("#clip-code").value = found.code;
      } catch (err) {
        if (err.status === 404) {
          invalid($("#clip-code"), error,
            `No guest with code ${code} at ${ctx.eventLabel(slug)} (or their code has expired).`);
          return;
        }
        throw err;
      }
    }
    const item = await call("/clip-requests", { method: "POST", body });
    if (!built) return;  // logged out meanwhile
    $("#clip-code").value = "";
    toast(`Clip request #${item.id} created (${STATUS_LABELS[item.status] || item.status}).`);
    const list = $("#clip-list");
    const old = list.querySelector(`li[data-request-id="${item.id}"]`);
    if (old) replaceRow(old, item); else list.prepend(requestRow(item, { fresh: true }));
    renderFooter();
    live.kick();
  } catch (err) {
    showError(error, err.message);
  } finally {
    button.disabled = cameras.length === 0;
    button.textContent = "Request clip";
  }
}

let showing = false;

function build() {
  if (built) return;
  built = true;
  $("#panel-cctv").replaceChildren($("#cctv-template").content.cloneNode(true));
  $("#cctv-booth").textContent = data.boothId || "";
  $("#camera-form").addEventListener("submit", addCamera);
  $("#clip-form").addEventListener("submit", createRequest);
  $("#clips-refresh").addEventListener("click", reload);
  $("#clips-more").addEventListener("click", more);
}

export async function showCctv(shown) {
  showing = shown;
  if (!shown) { live.stop(); return; }
  build();
  prefill();
  const mine = epoch;
  await loadCameras();
  if (mine !== epoch) return;
  await reload();
  if (showing && built) live.start();
}

/** Logout: stop, and forget everything shown (the next operator starts from the template). */
export function resetCctv() {
  showing = false;
  live.stop();
  gen += 1;
  epoch += 1;
  built = false;
  prefilled = false;
  camerasLoaded = false;
  loading = false;
  cameras = [];
  names.clear();
  cursor = null;
  $("#panel-cctv").replaceChildren();
}

export function initCctv(context) {
  ctx = context;
}
