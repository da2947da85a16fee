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

// --- QR scanning (only where the browser has BarcodeDetector) ---------------------------------
let scanStream = null;
let scanTimer = null;

function stopScan() {
  clearTimeout(scanTimer);
  if (scanStream) for (const t of scanStream.getTracks()) t.stop();
  scanStream = null;
  $("#scanner").hidden = true;
}

async function startScan() {
  const status = $("#scanner-status");
  $("#scanner").hidden = false;
  status.textContent = "Point the camera at the guest's code.";
  try {
    // eslint-disable-next-line no-undef
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    scanStream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    const video = $("#scanner-video");
    video.srcObject = scanStream;
    await video.play();
    const loop = async () => {
      if (!scanStream) return;
      let codes = [];
      try { codes = await detector.detect(video); } catch { codes = []; }
      const text = codes.length ? String(codes[0].rawValue || "").trim() : "";
      if (text) {
        const candidate = text.replace(/[\s-]/g, "").toUpperCase();
        if (CODE.test(candidate)) {
          stopScan();
          $("#lookup-code").value = candidate;
          lookup(candidate);
          return;
        }
        status.textContent = /\/g\/[A-Za-z0-9_-]+/.test(text)
          ? "This QR opens the guest's own page; it is not their code. Type the 6-character code shown with it."
          : "This QR is not a guest code. Type the guest's code instead.";
      }
      scanTimer = setTimeout(loop, 300);
    };
    loop();
  } catch (err) {
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
  if ("BarcodeDetector" in window && navigator.mediaDevices) {
    $("#scan-qr").hidden = false;
    $("#scan-qr").addEventListener("click", startScan);
    $("#scanner-stop").addEventListener("click", stopScan);
  }
}

export { stopScan };
