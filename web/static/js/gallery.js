// The live event gallery (/e/<slug>).
//
// Newest first, infinite scroll with the `before` cursor. A websocket (found through
// /api/gallery/<slug>/socket; served on the box's gallery port) announces new photos: the page
// shows "New images added" and fetches them only when the guest taps it (`since` cursor), so
// nothing moves under someone's thumb and no one looking at a photo is interrupted. Every 30-45 s
// the page also asks `since` itself, socket open or not (seed 004: a socket can lose a message
// without closing), and while the socket is down it reconnects with back-off.
//
// Invariants: `shown` holds every photo on the page and `announced` every photo counted in the
// toast and not shown yet; a photo enters each at most once, so it is never shown or announced
// twice, whatever mix of socket messages, polls and reconnects delivered it.
import { $, api, backoff, deviceId, el, networkBanner, pageData, toast } from "./common.js";

const event = pageData();
const base = `/api/gallery/${encodeURIComponent(event.slug)}`;
const PAGE = 30;
const DELTA_PAGE = 200;
const headers = { "X-Device-Id": deviceId() };

const grid = $("#grid");
const newToast = $("#new-toast");
const status = $("#grid-status");
const shown = new Map(); // photo id → photo (as the API gave it)
const announced = new Set();
let newest = null; // cursor: `since` asks for what is newer than this
let older = null; // cursor: `before` asks for the next older page; null when none is left
let loadingOlder = false;
let olderDone = false;
let socket = null;
let reconnectAttempt = 0;
let reconnectTimer = null;
let pollTimer = null;
let catchingUp = false;

networkBanner();

// --- tiles -----------------------------------------------------------------------------------

function thumbUrl(photo) {
  return photo.urls.small || photo.urls.medium || photo.urls.large;
}

function tileContent(photo) {
  const url = thumbUrl(photo);
  if (!url) return el("span", { class: "pending" }, "Preparing…");
  const img = el("img", { src: url, alt: "", loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => refreshPhoto(photo.id, { once: true }), { once: true });
  return img;
}

function tile(photo) {
  const open = el("button", { type: "button", "aria-label": "Open photo" }, tileContent(photo));
  open.addEventListener("click", () => openViewer(photo.id));
  return el("li", { class: "tile", dataset: { photoId: photo.id } }, open,
    photo.likes ? el("span", { class: "badge", "aria-hidden": "true" }, `♥ ${photo.likes}`) : null);
}

function updateTile(photo) {
  const node = grid.querySelector(`[data-photo-id="${CSS.escape(photo.id)}"]`);
  if (node) node.replaceWith(tile(photo));
}

/** Add photos that are not on the page yet, at the top (newest first) or the bottom. */
function place(photos, where) {
  const fresh = photos.filter((p) => !shown.has(p.id));
  for (const p of fresh) {
    shown.set(p.id, p);
    announced.delete(p.id);
  }
  const nodes = fresh.map(tile);
  if (where === "top") {
    for (const n of nodes) n.classList.add("fresh");
    grid.prepend(...nodes);
  } else {
    grid.append(...nodes);
  }
  $("#gallery-empty").hidden = shown.size > 0;
  return fresh.length;
}

async function refreshPhoto(id, { once = false } = {}) {
  try {
    const photo = await api(`${base}/photos/${encodeURIComponent(id)}`, { headers });
    shown.set(photo.id, photo);
    if (!once || thumbUrl(photo)) updateTile(photo);
    if (viewing === photo.id) fillViewer(photo);
  } catch {
    /* gone (hidden by the operator) or offline: the tile stays as it is */
  }
}

// --- pages -----------------------------------------------------------------------------------

async function loadFirst() {
  status.textContent = "Loading photos…";
  try {
    const page = await api(`${base}/photos?limit=${PAGE}`, { headers });
    place(page.photos, "bottom");
    newest = page.newestCursor;
    older = page.nextBefore;
    olderDone = !older;
    status.textContent = "";
  } catch (err) {
    status.textContent = `${err.message} Retrying…`;
    setTimeout(loadFirst, backoff(2));
    return;
  }
  connect();
  startPolling(); // always, socket or not: a message the socket missed is caught within 45 s
  watchBottom();
  openFromHash();
}

async function loadOlder() {
  if (loadingOlder || olderDone) return;
  loadingOlder = true;
  status.textContent = "Loading more…";
  try {
    const page = await api(`${base}/photos?limit=${PAGE}&before=${encodeURIComponent(older)}`, { headers });
    place(page.photos, "bottom");
    older = page.nextBefore;
    olderDone = !older;
    status.textContent = olderDone && shown.size > PAGE ? "You have seen every photo." : "";
  } catch (err) {
    status.textContent = err.message;
  } finally {
    loadingOlder = false;
  }
}

function watchBottom() {
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadOlder();
  }, { rootMargin: "400px 0px" });
  observer.observe($("#grid-sentinel"));
}

/** Everything newer than `newest`, oldest batch first (the API's `since` contract). */
async function* delta() {
  let more = true;
  while (more) {
    const since = newest ? `&since=${encodeURIComponent(newest)}` : "";
    const page = await api(`${base}/photos?limit=${DELTA_PAGE}${since}`, { headers });
    yield page;
    more = page.hasMoreSince && page.newestCursor !== newest;
    newest = page.newestCursor || newest;
  }
}

// --- "New images added" --------------------------------------------------------------------------

function announce(ids) {
  let added = 0;
  for (const id of ids) {
    if (!shown.has(id) && !announced.has(id)) {
      announced.add(id);
      added += 1;
    }
  }
  if (added) renderToast();
}

function renderToast() {
  const n = announced.size;
  newToast.hidden = n === 0;
  $("#new-toast-text").textContent = n > 1 ? `New images added (${n})` : "New images added";
}

async function showNew() {
  newToast.disabled = true;
  try {
    for await (const page of delta()) {
      // Each batch is newest first and newer than the one before: prepending in turn keeps
      // the whole grid newest first.
      place(page.photos, "top");
    }
    announced.clear();
    renderToast();
    window.scrollTo({ top: 0, behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
    grid.querySelector("button")?.focus({ preventScroll: true });
  } catch (err) {
    toast(err.message, { error: true });
  } finally {
    newToast.disabled = false;
  }
}

newToast.addEventListener("click", showNew);

/** Ask what is new since the newest photo on the page and announce what nobody announced yet
 * (seed 004's 30-45 s poll: it runs while the socket is open too, since a socket can miss a
 * message without closing). */
async function checkMissed() {
  if (catchingUp) return;
  catchingUp = true;
  try {
    const since = newest ? `&since=${encodeURIComponent(newest)}` : "";
    const page = await api(`${base}/photos?limit=${DELTA_PAGE}${since}`, { headers });
    announce(page.photos.map((p) => p.id));
  } catch {
    /* offline: the next poll or the socket will tell */
  } finally {
    catchingUp = false;
  }
}

// --- the live socket ---------------------------------------------------------------------------

function setLive(state) {
  const dot = $("#live-state");
  const label = { live: "Live", polling: "Reconnecting… (checking every 30 s)", connecting: "Connecting…" }[state];
  dot.dataset.state = state;
  dot.title = label;
  $("#live-label").textContent = label;
}

function startPolling() {
  if (pollTimer) return;
  const tick = () => {
    pollTimer = setTimeout(async () => {
      await checkMissed();
      if (pollTimer) tick();
    }, 30000 + Math.random() * 15000);
  };
  tick();
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connect, backoff(reconnectAttempt++, { base: 1000, cap: 30000 }));
}

function onMessage(message) {
  let data;
  try { data = JSON.parse(message.data); } catch { return; }
  if (data.type === "gallery:resync") {
    checkMissed(); // the booth's relay had a gap: photos may have gone unannounced
    return;
  }
  const id = data.photo_id;
  if (!id) return;
  if (data.type === "photo:upload:complete") announce([id]);
  else if (data.type === "photo:updated" && shown.has(id)) refreshPhoto(id);
}

async function connect() {
  clearTimeout(reconnectTimer);
  if (socket) return;
  setLive("connecting");
  let info;
  try {
    info = await api(`${base}/socket`);
  } catch {
    setLive("polling");
    scheduleReconnect();
    return;
  }
  const ws = new WebSocket(info.url, ["json"]);
  socket = ws;
  ws.addEventListener("open", () => {
    reconnectAttempt = 0;
    setLive("live");
    checkMissed(); // anything published while the socket was down
  });
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", () => {
    if (socket !== ws) return;
    socket = null;
    setLive("polling");
    scheduleReconnect();
  });
}

window.addEventListener("online", () => { if (!socket) connect(); });

// --- the photo viewer ------------------------------------------------------------------------

const viewer = $("#viewer");
let viewing = null;

function fillViewer(photo) {
  const img = $("#viewer-img");
  const url = photo.urls.large || photo.urls.medium || photo.urls.optimized || thumbUrl(photo);
  if (url && img.getAttribute("src") !== url) img.src = url;
  img.alt = "Photo from the event";
  $("#like-count").textContent = String(photo.likes);
  const like = $("#like-button");
  like.setAttribute("aria-pressed", String(Boolean(photo.likedByMe)));
  like.setAttribute("aria-label", `${photo.likedByMe ? "Unlike" : "Like"} (${photo.likes} likes)`);
  $("#download-link").href = photo.downloadUrl;
}

async function openViewer(id) {
  viewing = id;
  const photo = shown.get(id);
  if (photo) fillViewer(photo);
  $("#comment-list").replaceChildren();
  $("#comment-error").hidden = true;
  if (!viewer.open) viewer.showModal();
  history.replaceState(null, "", `#photo=${encodeURIComponent(id)}`);
  loadComments(id);
  if (!photo) refreshPhoto(id);
}

function closeViewer() {
  if (viewer.open) viewer.close();
}

viewer.addEventListener("close", () => {
  const id = viewing;
  viewing = null;
  history.replaceState(null, "", location.pathname + location.search);
  grid.querySelector(`[data-photo-id="${CSS.escape(id || "")}"] button`)?.focus({ preventScroll: true });
});
$("#viewer-close").addEventListener("click", closeViewer);
viewer.addEventListener("click", (e) => { if (e.target === viewer) closeViewer(); });

async function openFromHash() {
  const match = /^#photo=([\w-]+)$/.exec(location.hash);
  if (!match) return;
  try {
    const photo = await api(`${base}/photos/${encodeURIComponent(match[1])}`, { headers });
    if (!shown.has(photo.id)) shown.set(photo.id, photo);
    openViewer(photo.id);
  } catch {
    history.replaceState(null, "", location.pathname);
  }
}

$("#like-button").addEventListener("click", async () => {
  const photo = shown.get(viewing);
  if (!photo) return;
  try {
    const answer = await api(`${base}/photos/${encodeURIComponent(photo.id)}/like`, {
      method: photo.likedByMe ? "DELETE" : "POST", headers,
    });
    Object.assign(photo, { likes: answer.likes, likedByMe: answer.likedByMe });
    fillViewer(photo);
    updateTile(photo);
  } catch (err) {
    toast(err.message, { error: true });
  }
});

function commentItem(c) {
  return el("li", {}, el("span", { class: "who" }, c.authorName || "Guest"), c.body);
}

async function loadComments(id) {
  try {
    const page = await api(`${base}/photos/${encodeURIComponent(id)}/comments?limit=50`, { headers });
    if (viewing === id) $("#comment-list").replaceChildren(...page.comments.map(commentItem));
  } catch { /* the photo still shows */ }
}

$("#comment-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("#comment-body");
  const body = input.value.trim();
  const error = $("#comment-error");
  error.hidden = true;
  if (!body || !viewing) return;
  try {
    const comment = await api(`${base}/photos/${encodeURIComponent(viewing)}/comments`, {
      method: "POST", body: { body }, headers,
    });
    $("#comment-list").prepend(commentItem(comment));
    input.value = "";
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
});

$("#share-button").addEventListener("click", async () => {
  const url = `${location.origin}${location.pathname}#photo=${encodeURIComponent(viewing || "")}`;
  if (navigator.share) {
    try { await navigator.share({ title: event.name, url }); } catch { /* dismissed */ }
    return;
  }
  try {
    await navigator.clipboard.writeText(url);
    toast("Link copied");
  } catch {
    toast(url);
  }
});

loadFirst();
