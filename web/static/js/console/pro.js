// Pro Capture: the booth's active session (the tethered camera's hot folder files go to it) and
// this booth's recent jobs, arriving live (polled every 2 s while the page is visible).
import { $, toast } from "../common.js";
import { call } from "./session.js";
import { getGuest, onGuestChange } from "./guest.js";
import { data, jobRow, options, poller, showError, styleLabel, updateRow } from "./ui.js";

const booth = encodeURIComponent(data.boothId || "");
let ctx = null;
let active = null;      // the server's active session, or null
let remaining = 0;      // seconds, counted down locally, resynced by every poll
let ticker = null;
let busy = false;
const seen = new Set();
let firstLoad = true;

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function render() {
  const status = $("#pro-status");
  const state = $("#pro-state");
  const ttl = $("#pro-ttl");
  const guest = getGuest();
  if (active) {
    status.dataset.state = "active";
    const who = active.mode === "gallery"
      ? `Gallery mode (${ctx.eventLabel(active.eventId)}): photos go straight into the gallery.`
      : `${active.name || "Guest"}${active.whatsapp ? ` (${active.whatsapp})` : ""}, ${styleLabel(active.styleId)}.`;
    state.textContent = `Waiting for file… ${who}`;
    ttl.hidden = false;
    ttl.textContent = remaining > 0
      ? `Ends in ${clock(remaining)} unless a photo arrives (each photo restarts the timer).`
      : "Ending…";
  } else {
    status.dataset.state = "idle";
    state.textContent = "No active session. Files arriving now go to the orphan folder.";
    ttl.hidden = true;
  }
  $("#pro-stop").hidden = !active;
  const start = $("#pro-start");
  start.disabled = busy || !guest;
  start.textContent = guest ? `Start Pro Capture for ${guest.name}` : "Start Pro Capture (find a guest first)";
  $("#pro-gallery").disabled = busy;
}

function setActive(value) {
  active = value;
  remaining = value ? (value.ttlSecondsRemaining ?? value.ttlSeconds ?? 0) : 0;
  clearInterval(ticker);
  ticker = null;
  if (active) {
    ticker = setInterval(() => {
      remaining -= 1;
      if (remaining <= 0) { clearInterval(ticker); ticker = null; recent.kick(); }
      render();
    }, 1000);
  }
  render();
}

async function start(body) {
  const error = $("#pro-error");
  showError(error, "");
  busy = true;
  render();
  try {
    const result = await call(`/booth/${booth}/active-session`, { method: "POST", body });
    setActive(result);
    toast(result.mode === "gallery" ? "Gallery mode started." : `Pro Capture started for ${result.name}.`);
  } catch (err) {
    showError(error, err.message);
  } finally {
    busy = false;
    render();
    recent.kick();
  }
}

async function stop() {
  const error = $("#pro-error");
  showError(error, "");
  busy = true;
  render();
  try {
    const result = await call(`/booth/${booth}/active-session`, { method: "DELETE" });
    setActive(null);
    toast(result.cleared ? "Pro Capture stopped." : "There was no active session.");
  } catch (err) {
    showError(error, err.message);
  } finally {
    busy = false;
    render();
  }
}

const recent = poller(async () => {
  const body = await call(`/booth/${booth}/recent-jobs?limit=20`);
  const incoming = body.active || null;
  const changed = Boolean(incoming) !== Boolean(active)
    || (incoming && active && incoming.startedAt !== active.startedAt);
  if (changed) setActive(incoming);
  else if (incoming) { active = incoming; remaining = incoming.ttlSecondsRemaining; render(); }
  const list = $("#recent-list");
  const rows = [];
  for (const job of body.items) {
    const old = list.querySelector(`li[data-job-id="${job.id}"]`);
    const isNew = !seen.has(job.id) && !firstLoad;
    seen.add(job.id);
    rows.push(old ? updateRow(old, job, { onOpen: ctx.openJob })
      : jobRow(job, { onOpen: ctx.openJob, fresh: isNew }));
  }
  // Re-order only if needed, so rows (and focus) stay put between polls.
  const current = [...list.children];
  if (rows.length !== current.length || rows.some((r, i) => r !== current[i])) list.replaceChildren(...rows);
  $("#recent-empty").hidden = rows.length > 0;
  firstLoad = false;
}, 2000);

export function showPro(shown) {
  if (shown) recent.start();
  else recent.stop();
}

export function initPro(context) {
  ctx = context;
  $("#pro-booth").textContent = data.boothId || "";
  options($("#pro-style"), data.styles || [], "original");
  $("#pro-start").addEventListener("click", () => {
    const guest = getGuest();
    if (!guest) return;
    start({ eventId: ctx.eventSlug(), sessionId: guest.sessionId, styleId: $("#pro-style").value });
  });
  $("#pro-gallery").addEventListener("click", () => start({ eventId: ctx.eventSlug(), mode: "gallery" }));
  $("#pro-stop").addEventListener("click", stop);
  onGuestChange(render);
  render();
}

export function setProDefaultStyle(styleId) {
  if (styleId) $("#pro-style").value = styleId;
}
