// The guest card (shared by Capture and Pro Capture): look a guest up by code, or scan a QR.
import { $ } from "../common.js";
import { call } from "./session.js";
import { showError } from "./ui.js";

const CODE = /^[A-HJ-NP-Z2-9]{6}$/;
let guest = null;
let ctx = null;
const listeners = new Set();

export const getGuest = () => guest;
export function onGuestChange(fn) { listeners.add(fn); }

function setGuest(value) {
  guest = value;
  $("#guest-found").hidden = !guest;
  if (guest) {
    $("#guest-name").textContent = guest.name;
    $("#guest-whatsapp").textContent = guest.whatsapp;
    $("#guest-code").textContent = guest.code;
  }
  for (const fn of listeners) fn(guest);
}

export function clearGuest() {
  setGuest(null);
  $("#lookup-code").value = "";
  showError($("#lookup-error"), "");
}

/** Move the card into the panel being shown (one card, one state, two places). */
export function placeGuestCard(slot) { slot.append($("#guest-card")); }

async function lookup(raw) {
  const code = raw.replace(/[\s-]/g, "").toUpperCase();
  const input = $("#lookup-code");
  const error = $("#lookup-error");
  showError(error, "");
  input.removeAttribute("aria-invalid");
  if (!code) {
    showError(error, "Type the guest's code (6 letters and digits).");
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  const button = $("#lookup-submit");
  button.disabled = true;
  button.textContent = "Finding…";
  try {
    const slug = ctx.eventSlug();
    const found = await call(`/sessions/${encodeURIComponent(code)}?eventId=${encodeURIComponent(slug)}`);
    setGuest(found);
    input.value = found.code;
  } catch (err) {
    setGuest(null);
    input.setAttribute("aria-invalid", "true");
    if (err.status === 404) {
      showError(error, `No guest with code ${code} at this event (or their code has expired).`);
    } else {
      showError(error, err.message);
    }
  } finally {
    button.disabled = false;
    button.textContent = "Find guest";
  }
}

// --- QR scanning -------------------------------------------------------------------------------
// The guest's QR (join page) holds their page's URL; the booth resolves whatever was read
// (POST /sessions/scan: a page URL, a token or a code). Frames are read by BarcodeDetector where
// the browser has one, else by jsQR (web/static/vendor, served by the box): Chromium on Linux,
// Firefox and older iOS Safari have none.
let scanStream = null;
let scanTimer = null;
let scanCanvas = null;
/** Bumped by every start and stop: a camera that opens, or a loop that wakes, after its scan was
 * stopped or replaced (a second tap on Scan QR, Stop while the permission prompt is up) lets go. */
let scanRun = 0;
/** The pause between decoded frames (at most 8 a second) and the long edge frames are scaled
 * down to: enough to read a phone screen's QR, light enough for the operator's phone. */
const SCAN_INTERVAL_MS = 125;
const SCAN_EDGE = 640;

function stopScan() {
  scanRun += 1;
  clearTimeout(scanTimer);
  if (scanStream) for (const t of scanStream.getTracks()) t.stop();
  scanStream = null;
  const video = $("#scanner-video");
  if (video) video.srcObject = null;
  $("#scanner").hidden = true;
}

/** A function reading one video frame: the QR's text, or "" when it holds none. */
function frameReader(video) {
  if ("BarcodeDetector" in window) {
    // eslint-disable-next-line no-undef
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    return async () => {
      try {
        const codes = await detector.detect(video);
        return codes.length ? String(codes[0].rawValue || "") : "";
      } catch {
        return "";
      }
    };
  }
  if (typeof window.jsQR !== "function") return null;
  scanCanvas = scanCanvas || document.createElement("canvas");
  const context = scanCanvas.getContext("2d", { willReadFrequently: true });
  return async () => {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return "";
    const scale = Math.min(1, SCAN_EDGE / Math.max(w, h));
    scanCanvas.width = Math.round(w * scale);
    scanCanvas.height = Math.round(h * scale);
    context.drawImage(video, 0, 0, scanCanvas.width, scanCanvas.height);
    const frame = context.getImageData(0, 0, scanCanvas.width, scanCanvas.height);
    const found = window.jsQR(frame.data, frame.width, frame.height, { inversionAttempts: "dontInvert" });
    return found ? found.data : "";
  };
}

async function useScanned(text) {
  const status = $("#scanner-status");
  status.textContent = "Found a code: looking the guest up…";
  try {
    const session = await call("/sessions/scan", { method: "POST", body: { qr: text, eventId: ctx.eventSlug() } });
    stopScan();
    setGuest(session);
    $("#lookup-code").value = session.code;
    showError($("#lookup-error"), "");
    return true;
  } catch (err) {
    status.textContent = err.status === 404
      ? "This QR is not a guest's code (or their session has ended). Try again or type their code."
      : `${err.message} Try again or type their code.`;
    return false;
  }
}

async function startScan() {
  if (scanStream) return;
  const run = ++scanRun;
  const status = $("#scanner-status");
  $("#scanner").hidden = false;
  status.textContent = "Point the camera at the guest's QR.";
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    if (run !== scanRun) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    scanStream = stream;
    const video = $("#scanner-video");
    video.srcObject = scanStream;
    await video.play();
    const read = frameReader(video);
    if (!read) throw new Error("this browser cannot read QR codes");
    let last = "";
    const loop = async () => {
      if (run !== scanRun) return;
      const text = (await read()).trim();
      // The same unusable QR in view frame after frame is asked about once.
      if (text && text !== last) {
        last = text;
        if (await useScanned(text)) return;
      }
      if (run === scanRun) scanTimer = setTimeout(loop, SCAN_INTERVAL_MS);
    };
    loop();
  } catch (err) {
    if (run !== scanRun) return; // stopped meanwhile: the failure is nobody's news
    stopScan();
    showError($("#lookup-error"), `Can't scan: ${err.message || err.name}. Type the code instead.`);
  }
}

export function initGuest(context) {
  ctx = context;
  $("#lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lookup($("#lookup-code").value);
  });
  $("#lookup-code").addEventListener("input", (e) => {
    e.target.removeAttribute("aria-invalid");
    $("#lookup-error").hidden = true;
  });
  $("#guest-clear").addEventListener("click", () => { clearGuest(); $("#lookup-code").focus(); });
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("#scan-qr").hidden = false;
    $("#scan-qr").addEventListener("click", startScan);
    $("#scanner-stop").addEventListener("click", stopScan);
  }
}

export { stopScan };
