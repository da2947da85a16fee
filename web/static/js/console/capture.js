// Capture: webcam (or a file) → style → POST /jobs with one Idempotency-Key per capture.
// Every capture is saved in the outbox (IndexedDB) before it is sent and removed only on a
// definite answer; what did not get through is listed under "Resume upload".
import { $, el, randomId, toast, timeText } from "../common.js";
import { call, upload } from "./session.js";
import * as outbox from "./outbox.js";
import { getGuest, onGuestChange } from "./guest.js";
import { FINAL, data, jobRow, options, poller, showError, styleLabel, updateRow } from "./ui.js";

let ctx = null;
let stream = null;
let capture = null;    // {blob, filename, key, url}
let sending = false;
const sent = new Map(); // job id → job (sent from this page), newest last

// --- camera ----------------------------------------------------------------------------------
function cameraMessage(err) {
  if (!navigator.mediaDevices) {
    return "The camera needs a secure page (https, or http://localhost). Choose a file instead.";
  }
  if (err.name === "NotAllowedError") return "Camera permission was refused. Allow it in the browser, or choose a file.";
  if (err.name === "NotFoundError" || err.name === "OverconstrainedError") return "No camera found. Choose a file instead.";
  if (err.name === "NotReadableError") return "The camera is busy in another app. Close it and try again.";
  return `The camera did not start (${err.message || err.name}). Choose a file instead.`;
}

async function startCamera() {
  const error = $("#camera-error");
  showError(error, "");
  if (stream) return;
  try {
    if (!navigator.mediaDevices) throw new Error("no mediaDevices");
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1920 }, height: { ideal: 1080 } }, audio: false,
    });
  } catch (err) {
    showError(error, cameraMessage(err));
    return;
  }
  const video = $("#camera-video");
  video.srcObject = stream;
  await video.play().catch(() => {});
  $("#camera-start").hidden = true;
  if (!capture) showVideo();
}

export function stopCamera() {
  if (stream) for (const t of stream.getTracks()) t.stop();
  stream = null;
  $("#camera-video").srcObject = null;
  $("#camera-video").hidden = true;
  $("#camera-shoot").hidden = true;
  $("#camera-start").hidden = false;
  if (!capture) $("#stage-empty").hidden = false;
}

function showVideo() {
  $("#camera-video").hidden = false;
  $("#photo-preview").hidden = true;
  $("#stage-empty").hidden = true;
  $("#camera-shoot").hidden = false;
  $("#camera-retake").hidden = true;
}

function setCapture(blob, filename) {
  if (capture && capture.url) URL.revokeObjectURL(capture.url);
  capture = blob ? { blob, filename, key: randomId(), url: URL.createObjectURL(blob) } : null;
  const preview = $("#photo-preview");
  if (capture) {
    preview.src = capture.url;
    preview.hidden = false;
    $("#camera-video").hidden = true;
    $("#stage-empty").hidden = true;
    $("#camera-shoot").hidden = true;
    $("#camera-retake").hidden = false;
    $("#camera-retake").textContent = stream ? "Retake" : "Remove photo";
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
    $("#camera-retake").hidden = true;
    $("#photo-file").value = "";
    if (stream) showVideo();
    else $("#stage-empty").hidden = false;
  }
  refreshSubmit();
}

function shoot() {
  const video = $("#camera-video");
  if (!video.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    if (blob) setCapture(blob, `capture-${Date.now()}.jpg`);
    else showError($("#camera-error"), "Could not take the photo. Try again.");
  }, "image/jpeg", 0.92);
}

// --- submitting ---------------------------------------------------------------------------------
function refreshSubmit() {
  const guest = getGuest();
  const button = $("#capture-submit");
  button.disabled = sending || !guest || !capture;
  const hint = $("#submit-hint");
  hint.textContent = sending ? "Uploading…"
    : !guest ? "Find a guest first."
    : !capture ? "Take a photo or choose a file."
    : `Ready to send for ${guest.name}.`;
}

/**
 * Send one outbox record. Resolves {job} on success; {error, kept} when it stays in the outbox
 * for "Resume upload"; {error, dropped} when the booth refused it for good.
 */
async function send(record, onProgress) {
  const form = new FormData();
  form.append("sessionId", record.sessionId);
  form.append("eventId", record.eventId);
  if (record.styleId) form.append("styleId", record.styleId);
  if (record.mode) form.append("mode", record.mode);
  form.append("image", record.blob, record.filename);
  try {
    const job = await upload("/jobs", form, { headers: { "Idempotency-Key": record.key }, onProgress });
    await outbox.remove(record.key).catch(() => {});
    track(job);
    return { job };
  } catch (err) {
    if (outbox.isDefinite(err)) {
      await outbox.remove(record.key).catch(() => {});
      return { error: err, dropped: true };
    }
    const saved = await outbox.put({ ...record, lastError: err.message, triedAt: new Date().toISOString() })
      .then(() => true, () => false);
    return { error: err, kept: saved };
  } finally {
    refreshResume();
  }
}

async function submit() {
  const guest = getGuest();
  if (sending || !guest || !capture) return;
  sending = true;
  const error = $("#submit-error");
  showError(error, "");
  refreshSubmit();
  const bar = $("#upload-bar");
  bar.value = 0;
  $("#upload-progress").hidden = false;
  const record = {
    key: capture.key,
    blob: capture.blob,
    filename: capture.filename || "photo.jpg",
    sessionId: guest.sessionId,
    eventId: ctx.eventSlug(),
    styleId: $("#capture-style").value,
    mode: $("#capture-mode").value,
    guestName: guest.name,
    code: guest.code,
    createdAt: new Date().toISOString(),
  };
  let stored = true;
  try { await outbox.put(record); } catch { stored = false; }
  const result = await send(record, (f) => { bar.value = Math.round(f * 100); });
  sending = false;
  $("#upload-progress").hidden = true;
  if (result.job) {
    toast(`Sent: ${guest.name}, ${styleLabel(record.styleId)}.`);
    setCapture(null);
  } else if (result.dropped) {
    showError(error, `The booth refused this photo: ${result.error.message}`);
  } else if (result.kept || stored) {
    showError(error, `Not sent: ${result.error.message} The photo is kept on this device under "Resume upload".`);
    setCapture(null);
  } else {
    showError(error, `Not sent: ${result.error.message} Try again.`);
  }
  refreshSubmit();
}

// --- "Resume upload" ---------------------------------------------------------------------------
const resumeUrls = [];
let resuming = new Set();

export async function refreshResume() {
  let items = [];
  try { items = await outbox.all(); } catch { items = []; }
  for (const u of resumeUrls.splice(0)) URL.revokeObjectURL(u);
  const list = $("#resume-list");
  list.replaceChildren(...items.map(resumeRow));
  $("#resume").hidden = items.length === 0;
  $("#resume-count").textContent = String(items.length);
  const badge = $("#tab-resume-count");
  badge.hidden = items.length === 0;
  badge.textContent = String(items.length);
  badge.setAttribute("aria-label", `${items.length} waiting to upload`);
  $("#resume-all").hidden = items.length < 2;
}

function resumeRow(rec) {
  const url = URL.createObjectURL(rec.blob);
  resumeUrls.push(url);
  const busy = resuming.has(rec.key);
  const bar = el("progress", { max: 100, value: 0, hidden: !busy, "aria-label": `Upload of ${rec.guestName}'s photo` });
  const taken = timeText(new Date(rec.createdAt));
  const discard = el("button", { type: "button", class: "button secondary small", disabled: busy }, "Discard");
  discard.addEventListener("click", async () => {
    if (discard.dataset.armed !== "1") {
      discard.dataset.armed = "1";
      discard.textContent = "Really discard?";
      setTimeout(() => { discard.dataset.armed = ""; discard.textContent = "Discard"; }, 4000);
      return;
    }
    await outbox.remove(rec.key).catch(() => {});
    toast(`Discarded ${rec.guestName}'s photo.`);
    refreshResume();
  });
  const resume = el("button", {
    type: "button", class: "button small", disabled: busy,
    onclick: () => resumeOne(rec, bar),
  }, busy ? "Uploading…" : "Resume");
  return el("li", { class: "resume-row", dataset: { key: rec.key } },
    el("img", { class: "resume-thumb", src: url, alt: "" }),
    el("div", { class: "resume-main" },
      el("div", { class: "resume-who" }, `${rec.guestName} (${rec.code})`),
      el("div", { class: "hint" }, `${styleLabel(rec.styleId)} · ${rec.eventId} · taken ${taken}`),
      rec.lastError ? el("div", { class: "field-error" }, rec.lastError) : null,
      bar),
    el("div", { class: "resume-actions" }, resume, discard));
}

async function resumeOne(rec, bar) {
  if (resuming.has(rec.key)) return;
  resuming.add(rec.key);
  for (const b of bar.closest("li").querySelectorAll("button")) b.disabled = true;
  bar.hidden = false;
  const fresh = await outbox.get(rec.key).catch(() => rec);
  const result = await send(fresh || rec, (f) => { bar.value = Math.round(f * 100); });
  resuming.delete(rec.key);
  if (result.job) toast(`Uploaded ${rec.guestName}'s photo.`);
  else if (result.dropped) toast(`The booth refused ${rec.guestName}'s photo: ${result.error.message}`, { error: true });
  else toast(`Still not sent: ${result.error.message}`, { error: true });
  refreshResume();
}

async function resumeAll() {
  const items = await outbox.all().catch(() => []);
  for (const rec of items) {
    const row = $(`#resume-list li[data-key="${CSS.escape(rec.key)}"]`);
    const bar = row ? row.querySelector("progress") : el("progress");
    await resumeOne(rec, bar);
  }
}

// --- jobs sent from here, with live progress -------------------------------------------------
const sentPoll = poller(async () => {
  const open = [...sent.values()].filter((j) => !FINAL.has(j.status));
  if (!open.length) { sentPoll.stop(); return; }
  for (const job of open) track(await call(`/jobs/${job.id}`));
}, 1500);

function track(job) {
  sent.set(job.id, job);
  const list = $("#sent-list");
  const old = list.querySelector(`li[data-job-id="${job.id}"]`);
  if (old) updateRow(old, job, { onOpen: ctx.openJob });
  else list.prepend(jobRow(job, { onOpen: ctx.openJob, fresh: true }));
  while (list.children.length > 10) list.lastElementChild.remove();
  $("#sent-empty").hidden = list.children.length > 0;
  if (!FINAL.has(job.status)) sentPoll.start();
}

export function initCapture(context) {
  ctx = context;
  options($("#capture-style"), data.styles || [], "original");
  options($("#capture-mode"), data.modes || [], "default");
  $("#camera-start").addEventListener("click", startCamera);
  $("#camera-shoot").addEventListener("click", shoot);
  $("#camera-retake").addEventListener("click", () => setCapture(null));
  $("#photo-file").addEventListener("change", (e) => {
    const file = e.target.files && e.target.files[0];
    if (file) setCapture(file, file.name);
  });
  $("#capture-submit").addEventListener("click", submit);
  $("#resume-all").addEventListener("click", resumeAll);
  onGuestChange(refreshSubmit);
  window.addEventListener("online", async () => {
    const n = (await outbox.all().catch(() => [])).length;
    if (n) toast(`Back online: ${n} photo${n > 1 ? "s" : ""} waiting under "Resume upload".`);
  });
  refreshSubmit();
  refreshResume();
}

/** The selected event's default style becomes the preselected one. */
export function setDefaultStyle(styleId) {
  if (styleId) $("#capture-style").value = styleId;
}
