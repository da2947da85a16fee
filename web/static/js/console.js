// The operator console: login, event selection, and five sections (tabs with hash routing):
// #capture (guest lookup, webcam/file, style, send; "Resume upload"), #pro (the booth's active
// session and its recent jobs), #queue (jobs and their detail), #cctv (NVR cameras and clip
// requests), #events (admin, bulk upload).
// Plain ES modules, no dependencies; the data comes from the same JSON API as every client.
import { $, api, el, networkBanner, toast } from "./common.js";
import { call, clearToken, initSession, setToken } from "./console/session.js";
import { clearGuest, initGuest, placeGuestCard, stopScan } from "./console/guest.js";
import { initCapture, setDefaultStyle, stopCamera } from "./console/capture.js";
import { initPro, setProDefaultStyle, showPro } from "./console/pro.js";
import { initQueue, openJob, reload as reloadQueue, showQueue } from "./console/queue.js";
import { initEvents, showEvent } from "./console/events.js";
import { initCctv, resetCctv, showCctv } from "./console/cctv.js";

const EVENT_KEY = "photobot.console.event";
const EVENTS_CACHE = "photobot.console.events";
const TABS = ["capture", "pro", "queue", "cctv", "events"];

let events = [];
let selected = null;
let current = null;
let entered = false;

const store = {
  get(key) { try { return localStorage.getItem(key); } catch { return null; } },
  set(key, value) { try { localStorage.setItem(key, value); } catch { /* private mode */ } },
};

const ctx = {
  eventSlug: () => (selected ? selected.slug : ""),
  event: () => selected,
  eventLabel(idOrSlug) {
    const found = events.find((e) => e.id === idOrSlug || e.slug === idOrSlug);
    return found ? found.name : idOrSlug;
  },
  openJob: (id) => openJob(id),
  eventUpdated(event) {
    events = events.map((e) => (e.id === event.id ? event : e));
    renderEvents(event.slug);
  },
  eventCreated(event) {
    events = [event, ...events.filter((e) => e.id !== event.id)];
    renderEvents(event.slug);
    selectEvent(event.slug);
  },
};

// --- login ----------------------------------------------------------------------------------
function showLogin(message) {
  entered = false;
  $("#console-loading").hidden = true;
  $("#console").hidden = true;
  $("#logout").hidden = true;
  $("#operator-name").hidden = true;
  $("#login").hidden = false;
  const note = $("#login-message");
  note.textContent = message || "";
  note.hidden = !message;
  $("#login-password").value = "";
  $("#login-password").focus();
}

function leave(message) {
  showPro(false);
  showQueue(false);
  resetCctv();
  stopCamera();
  stopScan();
  const dialog = $("#job-dialog");
  if (dialog.open) dialog.close();
  showLogin(message);
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const error = $("#login-error");
  error.hidden = true;
  const password = $("#login-password").value;
  const username = $("#login-username").value.trim();
  if (!password) {
    error.textContent = "Enter the operator password.";
    error.hidden = false;
    $("#login-password").setAttribute("aria-invalid", "true");
    $("#login-password").focus();
    return;
  }
  $("#login-password").removeAttribute("aria-invalid");
  const button = $("#login-submit");
  button.disabled = true;
  button.textContent = "Logging in…";
  try {
    const body = { password };
    if (username) body.username = username;
    const result = await api("/auth/login", { method: "POST", body });
    setToken(result.token, result.expiresAt, $("#login-remember").checked);
    enter(result.operator);
  } catch (err) {
    error.textContent = err.status === 401 ? "Wrong username or password." : err.message;
    error.hidden = false;
    $("#login-password").select();
  } finally {
    button.disabled = false;
    button.textContent = "Log in";
  }
});

$("#logout").addEventListener("click", () => {
  clearToken();
  leave("You are logged out.");
});

// --- events ---------------------------------------------------------------------------------
function renderEvents(chosen) {
  const select = $("#event-select");
  select.replaceChildren(...events.map((e) =>
    el("option", { value: e.slug }, e.visibility === "private" ? `${e.name} (private)` : e.name)));
  if (chosen) select.value = chosen;
  select.disabled = events.length === 0;
  if (selected) {
    const fresh = events.find((e) => e.id === selected.id);
    if (fresh) { selected = fresh; applyEvent(fresh); }
  }
}

/** The edit form and the preselected styles follow the selected event. */
function applyEvent(event) {
  showEvent(event);
  const style = (event.settings && event.settings.defaultStyle) || "original";
  setDefaultStyle(style);
  setProDefaultStyle(style);
}

function selectEvent(slug) {
  const event = events.find((e) => e.slug === slug) || events[0] || null;
  const changed = !selected || !event || selected.id !== event.id;
  selected = event;
  if (!event) return;
  $("#event-select").value = event.slug;
  store.set(EVENT_KEY, event.slug);
  applyEvent(event);
  if (changed) {
    clearGuest();
    if (current === "queue") reloadQueue();
  }
}

async function loadEvents() {
  try {
    const body = await call("/events");
    events = body.events;
    store.set(EVENTS_CACHE, JSON.stringify(events));
  } catch (err) {
    if (err.status === 401) return;
    try { events = JSON.parse(store.get(EVENTS_CACHE) || "[]"); } catch { events = []; }
    toast(events.length ? "Offline: using the events list saved on this device." : err.message,
      { error: !events.length });
  }
  const wanted = store.get(EVENT_KEY);
  const chosen = events.some((e) => e.slug === wanted) ? wanted : events[0] && events[0].slug;
  renderEvents(chosen);
  selectEvent(chosen);
}

$("#event-select").addEventListener("change", (e) => selectEvent(e.target.value));

// --- tabs (hash routing, arrow keys) --------------------------------------------------------
const tabButtons = () => TABS.map((t) => $(`#tab-${t}`));

function route() {
  if (!entered) return;
  const wanted = location.hash.replace("#", "");
  const tab = TABS.includes(wanted) ? wanted : "capture";
  if (tab === current) return;
  current = tab;
  for (const name of TABS) {
    const button = $(`#tab-${name}`);
    const on = name === tab;
    button.setAttribute("aria-selected", String(on));
    button.tabIndex = on ? 0 : -1;
    $(`#panel-${name}`).hidden = !on;
  }
  placeGuestCard($(tab === "pro" ? "#pro-guest-slot" : "#capture-guest-slot"));
  if (tab !== "capture") stopCamera();
  if (tab !== "capture" && tab !== "pro") stopScan();
  showPro(tab === "pro");
  showQueue(tab === "queue");
  showCctv(tab === "cctv");
}

function go(tab) {
  if (location.hash !== `#${tab}`) location.hash = tab;
  else route();
}

for (const button of tabButtons()) {
  button.addEventListener("click", () => go(button.dataset.tab));
  button.addEventListener("keydown", (e) => {
    const i = TABS.indexOf(button.dataset.tab);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    const tab = TABS[(next + TABS.length) % TABS.length];
    go(tab);
    $(`#tab-${tab}`).focus();
  });
}
window.addEventListener("hashchange", route);

// --- start ----------------------------------------------------------------------------------
async function enter(operator) {
  entered = true;
  current = null;
  $("#console-loading").hidden = true;
  $("#login").hidden = true;
  $("#console").hidden = false;
  $("#logout").hidden = false;
  const name = $("#operator-name");
  name.textContent = operator ? operator.username : "";
  name.hidden = !operator;
  await loadEvents();
  if (!entered) return;
  route();
}

networkBanner();
initGuest(ctx);
initCapture(ctx);
initPro(ctx);
initQueue(ctx);
initEvents(ctx);
initCctv(ctx);

if (initSession(leave)) {
  call("/auth/me")
    .then((body) => enter(body.operator))
    .catch((err) => {
      // Offline (or the box restarting): keep working with the remembered token; captures
      // wait in "Resume upload". A 401 has already returned to the login form.
      if (err.status !== 401) enter(null);
    });
} else {
  showLogin();
}
