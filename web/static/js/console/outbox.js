// Captures waiting to reach the booth, in IndexedDB: written BEFORE the upload starts and deleted
// only on a definite answer, so a dropped connection, a closed tab or a reload loses no photo.
// The key is the capture's Idempotency-Key: re-sending it never makes a second job.
const DB_NAME = "photobot-console";
const STORE = "captures";
let dbPromise = null;

function open() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "key" });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    dbPromise.catch(() => { dbPromise = null; });
  }
  return dbPromise;
}

async function run(mode, fn) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req ? req.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** Save (or update) a capture: {key, blob, filename, sessionId, eventId, styleId, mode, guestName, code, createdAt, lastError?}. */
export const put = (capture) => run("readwrite", (s) => s.put(capture));
export const remove = (key) => run("readwrite", (s) => s.delete(key));
export const get = (key) => run("readonly", (s) => s.get(key));

/** Every waiting capture, oldest first. */
export async function all() {
  const items = (await run("readonly", (s) => s.getAll())) || [];
  return items.sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1));
}

/**
 * Is an upload error definite (the capture will never be accepted, so keeping it is pointless)?
 * Network failures (status 0), 5xx (incl. 503), 408, 429 and 401 (log in again) are not.
 */
export function isDefinite(err) {
  const s = err.status;
  return s >= 400 && s < 500 && ![401, 408, 425, 429].includes(s);
}
