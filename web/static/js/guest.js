// The guest's own page (/g/<token>): their photos, live progress while styling, downloads,
// their clip, and WhatsApp links. Polls the API: every 2 s while something is being made,
// every 15 s otherwise (a photo may still arrive from the booth), and at once when the phone
// comes back online or the page becomes visible again.
import { $, api, deviceId, el, networkBanner, pageData } from "./common.js";

const { styles } = pageData();
const token = decodeURIComponent(location.pathname.split("/")[2] || "");
const FAST_MS = 2000;
const SLOW_MS = 15000;
const FINAL = new Set(["succeeded", "failed", "canceled"]);
const STAGE_TEXT = {
  queued: "waiting in line…",
  preprocessing: "preparing…",
  ai_processing: "styling…",
  uploading_output: "almost done…",
};
const tiles = new Map(); // photo id → <li>, so a poll never reloads an image already shown

let timer = null;
let busy = false;

networkBanner();

function jobLabel(job) {
  if (job.status === "failed") return "This one did not work. The booth staff can retry it.";
  if (job.status === "canceled") return "Canceled.";
  if (job.status === "queued") return STAGE_TEXT.queued;
  const text = STAGE_TEXT[job.progress.stage] || "working…";
  return job.progress.stage === "ai_processing" ? `${text} ${job.progress.percent}%` : text;
}

function renderJobs(jobs) {
  // Finished ones show up as photos; only the ones still in the making (and recent failures
  // without a photo) are listed here.
  const shown = jobs.filter((j) => !FINAL.has(j.status) || j.status === "failed");
  const list = $("#job-list");
  list.replaceChildren(
    ...shown.map((job) =>
      el("li", { class: `job-item ${job.status}`, dataset: { jobId: job.id } },
        el("div", { class: "label" },
          el("span", {}, job.styleId ? `${styles[job.styleId] || job.styleId} style` : "Your photo"),
          el("span", { class: "stage" }, jobLabel(job))),
        FINAL.has(job.status)
          ? null
          : el("progress", { max: 100, value: job.progress.percent, "aria-label": jobLabel(job) }))),
  );
  $("#progress-section").hidden = shown.length === 0;
  return jobs.some((j) => !FINAL.has(j.status));
}

function bestUrl(photo) {
  return photo.urls.medium || photo.urls.large || photo.urls.small || photo.urls.optimized;
}

function photoTile(photo) {
  // width/height reserve the photo's space before it loads: nothing below it jumps.
  const img = el("img", { alt: "Your photo", loading: "lazy", decoding: "async",
    width: photo.width || null, height: photo.height || null });
  const url = bestUrl(photo);
  if (url) img.src = url;
  const view = el("a", { class: "result-photo", href: photo.urls.large || url || "#", target: "_blank",
    rel: "noopener", "aria-label": "Open your photo full size" }, img);
  const actions = el("div", { class: "result-actions" },
    el("a", { class: "button", href: photo.downloadUrl, download: "" }, "Download"),
    el("a", { class: "button whatsapp", href: photo.whatsappShareUrl, target: "_blank",
      rel: "noopener" }, "Send to my WhatsApp"));
  const tile = el("li", { class: "result", dataset: { photoId: photo.id, ready: String(photo.ready) } },
    view, actions);
  tile._url = url;
  return tile;
}

function renderPhotos(photos) {
  const grid = $("#guest-photos");
  const wanted = photos.map((photo) => {
    let tile = tiles.get(photo.id);
    const url = bestUrl(photo);
    // A new derivative (or a re-signed URL after a failed load) replaces the tile; an
    // unchanged one is kept as is, so the image on screen is never reloaded.
    if (!tile || (url && tile._url !== url && tile.dataset.broken === "1") ||
        (photo.ready && tile.dataset.ready !== "true")) {
      const fresh = photoTile(photo);
      if (tile) tile.replaceWith(fresh);
      tile = fresh;
      tile.querySelector("img").addEventListener("error", () => { tile.dataset.broken = "1"; });
      tiles.set(photo.id, tile);
    }
    return tile;
  });
  // Newest first, in one pass; nodes already in place are not moved.
  wanted.forEach((tile, i) => {
    if (grid.children[i] !== tile) grid.insertBefore(tile, grid.children[i] || null);
  });
  while (grid.children.length > wanted.length) grid.lastElementChild.remove();
  $("#photos-empty").hidden = photos.length > 0;
  $("#photos-section").hidden = false;
}

function renderClips(clips) {
  const list = $("#clip-list");
  const known = new Set([...list.children].map((li) => li.dataset.clipId));
  for (const clip of clips) {
    if (known.has(String(clip.id))) continue;
    list.append(el("li", { dataset: { clipId: clip.id } },
      el("video", { controls: true, preload: "none", playsinline: true, poster: clip.posterUrl,
        src: clip.url, "aria-label": "Your booth video" }),
      el("p", {}, el("a", { href: clip.downloadUrl || clip.url, download: "" }, "Download video"))));
  }
  $("#clips-section").hidden = clips.length === 0;
}

function render(data) {
  $("#guest-status").hidden = true;
  $("#guest-head").hidden = false;
  $("#guest-event").textContent = data.event.name;
  document.title = `Your photos · ${data.event.name}`;
  $("#guest-name").textContent = data.session.name;
  $("#guest-code").textContent = data.session.code;
  $("#wa-share").href = data.whatsappShareUrl;
  const gallery = $("#gallery-link");
  gallery.hidden = data.event.visibility !== "public";
  gallery.href = `/e/${encodeURIComponent(data.event.slug)}`;
  const working = renderJobs(data.jobs);
  renderPhotos(data.photos);
  renderClips(data.clips || []);
  return working;
}

async function refresh() {
  if (busy) return;
  busy = true;
  clearTimeout(timer);
  let next = SLOW_MS;
  try {
    const data = await api(`/api/guest/${encodeURIComponent(token)}/results`, {
      headers: { "X-Device-Id": deviceId() },
    });
    next = render(data) ? FAST_MS : SLOW_MS;
  } catch (err) {
    if (err.status === 404) {
      $("#guest-status").hidden = true;
      $("#guest-head").hidden = true;
      $("#guest-missing").hidden = false;
      busy = false;
      return; // nothing will change: stop polling
    }
    $("#guest-status").textContent = tiles.size ? "" : err.message;
    next = FAST_MS * 2;
  } finally {
    busy = false;
  }
  if (!document.hidden) timer = setTimeout(refresh, next);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
window.addEventListener("online", refresh);
refresh();
