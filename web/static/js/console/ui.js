// Small pieces the console's views share: status chips, job rows, polling while visible.
import { backoff, el, pageData } from "../common.js";

export const data = pageData();
const STYLE_LABELS = Object.fromEntries((data.styles || []).map((s) => [s.id, s.label]));

export const FINAL = new Set(["succeeded", "failed", "canceled"]);
export const STAGES = [
  ["queued", "Queued"],
  ["preprocessing", "Preparing"],
  ["ai_processing", "Styling"],
  ["uploading_output", "Saving"],
  ["done", "Done"],
];
const STAGE_LABELS = { ...Object.fromEntries(STAGES), optimizing: "Optimizing" };
const STATUS_LABELS = {
  queued: "Queued", running: "Running", succeeded: "Done", failed: "Failed", canceled: "Canceled",
};

export const styleLabel = (id) => STYLE_LABELS[id] || (id ? id : "Original");
export const stageLabel = (stage) => STAGE_LABELS[stage] || stage || "";
export const statusLabel = (status) => STATUS_LABELS[status] || status;

/** A status chip: colour AND text (never colour alone). */
export function chip(status) {
  return el("span", { class: "chip", dataset: { status } }, statusLabel(status));
}

export function options(select, items, selected) {
  select.replaceChildren(...items.map((i) => el("option", { value: i.id }, i.label)));
  if (selected !== undefined && items.some((i) => i.id === selected)) select.value = selected;
}

export function shortTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

/** What a job row shows; rows are rebuilt only when this changes (keeps focus and images). */
function fingerprint(job) {
  return [job.status, job.progress && job.progress.percent, job.progress && job.progress.stage,
    job.bestOutputUrl ? "out" : "", job.attempts, job.cancelRequested].join("|");
}

/** A job as a list row: thumbnail, guest, style, chip, live progress, "Details". */
export function jobRow(job, { onOpen, fresh = false } = {}) {
  const final = FINAL.has(job.status);
  const percent = job.progress ? job.progress.percent || 0 : 0;
  const who = job.guest && job.guest.name ? job.guest.name : job.source === "hotfolder" ? "Pro camera" : "Guest";
  const thumb = job.bestOutputUrl
    ? el("img", { class: "job-thumb", src: job.bestOutputUrl, alt: "", loading: "lazy" })
    : el("span", { class: "job-thumb placeholder", "aria-hidden": "true" }, final ? "–" : `${percent}%`);
  const detail = !final ? `${stageLabel(job.progress && job.progress.stage)} · ${percent}%`
    : job.error ? job.error.message || job.error.code
    : job.status === "succeeded" ? `Finished ${shortTime(job.finishedAt)}`
    : statusLabel(job.status);
  const row = el(
    "li",
    { class: fresh ? "job-row fresh" : "job-row", dataset: { jobId: job.id, status: job.status } },
    thumb,
    el("div", { class: "job-main" },
      el("div", { class: "job-line" },
        el("span", { class: "job-who" }, who),
        chip(job.status)),
      el("div", { class: "job-meta" },
        el("span", {}, `${styleLabel(job.styleId)} · ${shortTime(job.createdAt)} · #${job.id.slice(0, 8)}`)),
      final ? null : el("progress", { max: 100, value: percent, "aria-label": `Progress of job ${job.id.slice(0, 8)}` }),
      el("div", { class: job.error ? "job-detail bad" : "job-detail" }, detail)),
    onOpen ? el("button", {
      type: "button", class: "button secondary small job-open",
      "aria-label": `Details of job ${job.id.slice(0, 8)} (${who})`, onclick: () => onOpen(job.id),
    }, "Details") : null,
  );
  row.dataset.fp = fingerprint(job);
  return row;
}

/** Replace `old` with a row for `job` if anything visible changed; keeps the focus on Details. */
export function updateRow(old, job, opts) {
  if (old.dataset.fp === fingerprint(job)) return old;
  const hadFocus = old.contains(document.activeElement);
  const row = jobRow(job, opts);
  old.replaceWith(row);
  if (hadFocus) { const b = row.querySelector("button"); if (b) b.focus(); }
  return row;
}

/**
 * Run `fn` every `ms` while the page is visible and started; failures back off (up to 30 s).
 * kick() runs it now.
 */
export function poller(fn, ms) {
  let timer = null;
  let busy = false;
  let started = false;
  let failures = 0;
  const schedule = () => {
    clearTimeout(timer);
    timer = null;
    if (!started || document.visibilityState !== "visible") return;
    const wait = failures ? Math.min(backoff(failures - 1, { base: ms }), 30000) : ms;
    timer = setTimeout(tick, wait);
  };
  async function tick() {
    timer = null;
    if (!started || busy || document.visibilityState !== "visible") return;
    busy = true;
    try { await fn(); failures = 0; } catch { failures += 1; }
    busy = false;
    schedule();
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && started) { clearTimeout(timer); tick(); }
  });
  return {
    start() { if (!started) { started = true; tick(); } },
    stop() { started = false; clearTimeout(timer); timer = null; },
    kick() { if (started) { clearTimeout(timer); tick(); } },
    get started() { return started; },
  };
}
