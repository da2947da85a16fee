// Guest registration: name + WhatsApp → the code, the QR of the guest's own page, and its link.
// Validation is the API's (one set of rules); its messages are shown under the field they name.
import { $, api, networkBanner, pageData } from "./common.js";

const event = pageData();
const form = $("#join-form");
const submit = $("#join-submit");
const fields = { name: $("#name"), whatsapp: $("#whatsapp") };
const errors = { name: $("#name-error"), whatsapp: $("#whatsapp-error"), form: $("#form-error") };
const FIELD_OF_CODE = { invalid_name: "name", invalid_whatsapp: "whatsapp" };
const remembered = `photobot.guest.${event.slug}`;

networkBanner();

function showError(where, message) {
  const box = errors[where];
  box.textContent = message;
  box.hidden = false;
  if (fields[where]) fields[where].setAttribute("aria-invalid", "true");
}

function clearErrors() {
  for (const [where, box] of Object.entries(errors)) {
    box.hidden = true;
    box.textContent = "";
    if (fields[where]) fields[where].removeAttribute("aria-invalid");
  }
}

function showResult(reg) {
  $("#result-name").textContent = reg.name;
  $("#result-code").textContent = reg.code;
  $("#result-qr").src = reg.qrSvgUrl;
  $("#result-link").href = reg.guestUrl;
  $("#join-card").hidden = true;
  $("#join-result").hidden = false;
  $("#result-title").focus();
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  const name = fields.name.value.trim();
  const whatsapp = fields.whatsapp.value.trim();
  // Only the obvious is checked here (so nobody waits for a round trip to learn a field is
  // empty); every other rule is the API's.
  if (!name) return showError("name", "Please enter your name.") || fields.name.focus();
  if (!whatsapp) return showError("whatsapp", "Please enter your WhatsApp number.") || fields.whatsapp.focus();
  submit.disabled = true;
  submit.textContent = "Registering…";
  try {
    const reg = await api("/sessions", { method: "POST", body: { eventId: event.slug, name, whatsapp } });
    const shown = { ...reg, name };
    try {
      localStorage.setItem(remembered, JSON.stringify({ guestUrl: reg.guestUrl, expiresAt: reg.expiresAt }));
    } catch { /* private mode: nothing to remember */ }
    showResult(shown);
  } catch (err) {
    const where = FIELD_OF_CODE[err.code];
    if (where) {
      showError(where, err.message);
      fields[where].focus();
    } else if (err.code === "event_not_found") {
      showError("form", "This event is no longer open. Ask the booth staff.");
    } else {
      showError("form", err.message);
    }
  } finally {
    submit.disabled = false;
    submit.textContent = "Get my code";
  }
});

for (const [where, input] of Object.entries(fields)) {
  input.addEventListener("input", () => {
    if (!errors[where].hidden) {
      errors[where].hidden = true;
      input.removeAttribute("aria-invalid");
    }
  });
}

// Someone who registered on this phone before gets a way back to their page.
try {
  const saved = JSON.parse(localStorage.getItem(remembered) || "null");
  const PAGE_GRACE_MS = 7 * 86400e3;  // the guest page outlives the session (photobot.gallery)
  if (saved && saved.guestUrl && new Date(saved.expiresAt).getTime() + PAGE_GRACE_MS > Date.now()) {
    $("#returning-link").href = saved.guestUrl;
    $("#returning").hidden = false;
  }
} catch { /* nothing saved */ }
