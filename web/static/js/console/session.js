// The operator's token: in memory, and in localStorage only with "Remember me on this device".
// Every authenticated call goes through call()/upload() here, so a 401 anywhere ends the session
// in one place (the console shows the login form with a message).
import { api, xhrUpload } from "../common.js";

const TOKEN_KEY = "photobot.console.token";
let token = null;
let onExpired = () => {};

export function initSession(expiredHandler) {
  onExpired = expiredHandler;
  try {
    const stored = JSON.parse(localStorage.getItem(TOKEN_KEY) || "null");
    if (stored && stored.token && (!stored.expiresAt || Date.parse(stored.expiresAt) > Date.now())) {
      token = stored.token;
    } else if (stored) {
      localStorage.removeItem(TOKEN_KEY);
    }
  } catch { /* private mode or bad JSON: not remembered */ }
  return token;
}

export function hasToken() { return token !== null; }

export function setToken(value, expiresAt, remember) {
  token = value;
  try {
    if (remember) localStorage.setItem(TOKEN_KEY, JSON.stringify({ token: value, expiresAt }));
    else localStorage.removeItem(TOKEN_KEY);
  } catch { /* private mode: memory only */ }
}

export function clearToken() {
  token = null;
  try { localStorage.removeItem(TOKEN_KEY); } catch { /* nothing stored */ }
}

function guard(err) {
  if (err && err.status === 401 && token !== null) {
    clearToken();
    onExpired("Your login has expired. Please log in again.");
  }
  throw err;
}

/** api() with the operator's token; a 401 returns to the login form. */
export function call(path, options = {}) {
  return api(path, { ...options, token }).catch(guard);
}

/** xhrUpload() with the operator's token (upload progress); a 401 returns to the login form. */
export function upload(path, form, options = {}) {
  return xhrUpload(path, form, { ...options, token }).catch(guard);
}
