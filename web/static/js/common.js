// Shared by every page: the API client, small DOM helpers, the network banner, toasts.
// Plain ES module, no dependencies: the box serves it as is, with no internet at the venue.

/** An API answer that was not 2xx, with the API's {"error": {"code", "message"}}. */
export class ApiError extends Error {
  constructor(status, code, message, data = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.data = data; // the whole answer, for routes that say more than {"error"}
  }
  /** True when the request never got an answer (offline, connection dropped, box restarting). */
  get network() { return this.status === 0; }
}

const listeners = new Set();

/** Called with (ok: boolean) after every API call: the network banner's "last sync". */
export function onApiResult(fn) { listeners.add(fn); }
function report(ok) { for (const fn of listeners) fn(ok); }

/**
 * fetch() a JSON API route. `body` (an object) is sent as JSON; FormData/Blob as is.
 * Resolves with the parsed JSON (or null for an empty body); rejects with ApiError.
 */
export async function api(path, { method = "GET", body, token, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body instanceof FormData || body instanceof Blob) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    report(false);
    throw new ApiError(0, "network_error", "No connection to the booth. Check the Wi-Fi and try again.");
  }
  report(true);
  return parseResponse(response.status, await response.text());
}

/** The API's answer (status + body text) → data, or an ApiError. Shared with xhrUpload. */
export function parseResponse(status, text) {
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (status >= 200 && status < 300) return data;
  const error = data && data.error ? data.error : {};
  // A 503's own message names the booth's internals ("database unavailable: TimeoutError"):
  // people get plain words, code and data keep the detail.
  const message = status === 503 ? friendlyStatus(status) : error.message || friendlyStatus(status);
  throw new ApiError(status, error.code || `http_${status}`, message, data);
}

function friendlyStatus(status) {
  if (status === 413) return "That file is too large.";
  if (status === 429) return "Too many tries. Please wait a minute and try again.";
  if (status === 503) return "The booth cannot answer right now. Please try again in a moment.";
  if (status >= 500) return "The booth had a problem. Please try again.";
  return `Request failed (${status}).`;
}

/**
 * POST a FormData with upload progress (fetch has none). `onProgress(fraction)`.
 * Rejects with ApiError (status 0 when the network failed).
 */
export function xhrUpload(path, form, { token, headers = {}, onProgress, method = "POST" } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    xhr.setRequestHeader("Accept", "application/json");
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    if (onProgress) {
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    }
    xhr.onload = () => {
      report(true);
      try { resolve(parseResponse(xhr.status, xhr.responseText)); } catch (err) { reject(err); }
    };
    const failed = () => {
      report(false);
      reject(new ApiError(0, "network_error", "The upload did not reach the booth."));
    };
    xhr.onerror = failed;
    xhr.onabort = failed;
    xhr.ontimeout = failed;
    xhr.send(form);
  });
}

/** document.createElement with attributes and children (strings become text, never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** What the server rendered into <script type="application/json" id="page-data">. */
export function pageData() {
  const node = document.getElementById("page-data");
  return node ? JSON.parse(node.textContent) : {};
}

/** A random id kept on this phone (likes are one per device). */
export function deviceId() {
  const key = "photobot.deviceId";
  let id = null;
  try { id = localStorage.getItem(key); } catch { /* private mode */ }
  if (!id || !/^[A-Za-z0-9_-]{8,128}$/.test(id)) {
    id = randomId();
    try { localStorage.setItem(key, id); } catch { /* private mode: one id per page load */ }
  }
  return id;
}

export function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A short message at the bottom of the screen. */
export function toast(message, { error = false, ms = 4000 } = {}) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const node = el("div", { class: error ? "toast error" : "toast", role: error ? "alert" : "status" }, message);
  box.append(node);
  setTimeout(() => node.remove(), ms);
}

/** Exponential back-off with full jitter: attempt 0, 1, 2… → ms in [base, min(cap, base·2^n)]. */
export function backoff(attempt, { base = 1000, cap = 30000 } = {}) {
  const ceiling = Math.min(cap, base * 2 ** attempt);
  return base + Math.random() * (ceiling - base);
}

export function timeText(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/**
 * The online/offline banner. Shown while the browser is offline or the last API call failed;
 * says when the page last heard from the booth, and briefly "Back online" after recovering.
 */
export function networkBanner() {
  const banner = document.getElementById("net-banner");
  if (!banner) return { lastSync: () => null };
  let lastSync = null;
  let apiDown = false;
  let hideTimer = null;
  const render = () => {
    const offline = !navigator.onLine;
    const since = lastSync ? ` Last sync ${timeText(lastSync)}.` : "";
    if (offline || apiDown) {
      clearTimeout(hideTimer);
      banner.dataset.state = "offline";
      banner.textContent = offline
        ? `You are offline.${since}`
        : `Can't reach the booth right now, retrying.${since}`;
      banner.hidden = false;
    } else if (!banner.hidden && banner.dataset.state === "offline") {
      banner.dataset.state = "online";
      banner.textContent = `Back online. Last sync ${timeText(lastSync || new Date())}.`;
      hideTimer = setTimeout(() => { banner.hidden = true; }, 3000);
    }
  };
  onApiResult((ok) => {
    apiDown = !ok;
    if (ok) lastSync = new Date();
    render();
  });
  window.addEventListener("online", render);
  window.addEventListener("offline", render);
  render();
  return { lastSync: () => lastSync };
}
