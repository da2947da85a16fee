// Queue: the event's jobs with filters, live progress and "Load more"; the job detail dialog
// (stages, attempts, error, preview, download, retry, cancel).
import { $, el, randomId, toast } from "../common.js";
import { call } from "./session.js";
import {
  FINAL, STAGES, chip, data, jobRow, poller, shortTime, showError, stageLabel, styleLabel, updateRow,
} from "./ui.js";

const PAGE = 20;
let ctx = null;
let cursor = null;
let loading = false;
let gen = 0;           // bumped by every reload: a poll answer for older filters is dropped
const seen = new Set();

function query(extra = {}) {
  const params = new URLSearchParams({ eventId: ctx.eventSlug(), limit: String(PAGE) });
  const status = $("#queue-status").value;
  const q = $("#queue-q").value.trim();
  if (status) params.set("status", status);
  if (q) params.set("q", q);
  for (const [k, v] of Object.entries(extra)) params.set(k, v);
  return `/jobs?${params}`;
}

/** The first page again (filters changed, event changed, or Refresh). */
export async function reload() {
  const list = $("#queue-list");
  showError($("#queue-error"), "");
  loading = true;
  const mine = ++gen;
  try {
    const page = await call(query());
    if (mine !== gen) return;
    list.replaceChildren();
    seen.clear();
    appendItems(page.items);
    cursor = page.nextCursor;
  } catch (err) {
    showError($("#queue-error"), err.message);
  } finally {
    if (mine === gen) { loading = false; renderFooter(); }
  }
}

function appendItems(items) {
  const list = $("#queue-list");
  for (const job of items) {
    if (seen.has(job.id)) continue;
    seen.add(job.id);
    list.append(jobRow(job, { onOpen: openJob }));
  }
}

function renderFooter() {
  const list = $("#queue-list");
  $("#queue-empty").hidden = loading || list.children.length > 0;
  $("#queue-more").hidden = !cursor;
}

async function more() {
  if (!cursor || loading) return;
  const button = $("#queue-more");
  button.disabled = true;
  button.textContent = "Loading…";
  const mine = gen;
  try {
    const page = await call(query({ cursor }));
    if (mine !== gen) return;
    appendItems(page.items);
    cursor = page.nextCursor;
  } catch (err) {
    showError($("#queue-error"), err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Load more";
    renderFooter();
  }
}

/** Every few seconds: the first page again (new jobs on top) and any unfinished older row. */
const live = poller(async () => {
  if (loading) return;
  const list = $("#queue-list");
  const mine = gen;
  const page = await call(query());
  if (mine !== gen || loading) return;
  const fresh = [];
  for (const job of page.items) {
    const old = list.querySelector(`li[data-job-id="${job.id}"]`);
    if (old) updateRow(old, job, { onOpen: openJob });
    else if (!seen.has(job.id)) { seen.add(job.id); fresh.push(jobRow(job, { onOpen: openJob, fresh: true })); }
  }
  if (fresh.length) list.prepend(...fresh);
  const onFirst = new Set(page.items.map((j) => j.id));
  const older = [...list.querySelectorAll("li.job-row")]
    .filter((li) => !onFirst.has(li.dataset.jobId) && !FINAL.has(li.dataset.status)).slice(0, 10);
  for (const li of older) updateRow(li, await call(`/jobs/${li.dataset.jobId}`), { onOpen: openJob });
  renderFooter();
}, 2500);

export function showQueue(shown) {
  if (shown) { reload().then(() => live.start()); } else live.stop();
}

// --- job detail ---------------------------------------------------------------------------------
let openId = null;
let shownPrint = "";
const detailPrint = (job) => JSON.stringify([job.id, job.status, job.progress, job.attempts,
  job.cancelRequested, job.bestOutputUrl ? 1 : 0, (job.attemptsDetail || []).map((a) => a.outcome)]);
const detailPoll = poller(async () => {
  if (!openId) { detailPoll.stop(); return; }
  const job = await call(`/jobs/${openId}`);
  if (job.id !== openId) return;
  if (detailPrint(job) !== shownPrint) renderJob(job);
  if (FINAL.has(job.status)) detailPoll.stop();
}, 1500);

export async function openJob(id) {
  const dialog = $("#job-dialog");
  openId = id;
  $("#job-title").textContent = `Job #${id.slice(0, 8)}`;
  $("#job-body").replaceChildren(el("p", { class: "loading", role: "status" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  detailPoll.stop();
  try {
    const job = await call(`/jobs/${id}`);
    if (openId !== id) return;
    renderJob(job);
    if (!FINAL.has(job.status)) detailPoll.start();
  } catch (err) {
    $("#job-body").replaceChildren(el("p", { class: "form-error", role: "alert" }, err.message));
  }
}

function closeJob() {
  openId = null;
  detailPoll.stop();
  const dialog = $("#job-dialog");
  if (dialog.open) dialog.close();
}

function stagesList(job) {
  const current = job.progress ? job.progress.stage : "queued";
  let index = STAGES.findIndex(([id]) => id === current);
  if (job.status === "succeeded") index = STAGES.length;
  return el("ol", { class: "stages", "aria-label": "Stages" },
    STAGES.map(([id, label], i) => {
      let state = i < index ? "done" : i === index ? "current" : "todo";
      if (i === index && (job.status === "failed" || job.status === "canceled")) state = job.status;
      if (job.status === "succeeded") state = "done";
      const words = { done: "done", current: "in progress", todo: "not yet", failed: "failed", canceled: "canceled" };
      return el("li", { class: `stage-${state}`, "aria-current": state === "current" ? "step" : null },
        el("span", { class: "stage-dot", "aria-hidden": "true" }),
        el("span", {}, label),
        el("span", { class: "visually-hidden" }, ` (${words[state]})`));
    }));
}

function attemptsTable(job) {
  const rows = job.attemptsDetail || [];
  if (!rows.length) return el("p", { class: "hint" }, "No attempt yet.");
  return el("div", { class: "table-wrap" }, el("table", { class: "attempts" },
    el("caption", { class: "visually-hidden" }, "Attempts"),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "#"), el("th", { scope: "col" }, "Provider"),
      el("th", { scope: "col" }, "Outcome"), el("th", { scope: "col" }, "Time"))),
    el("tbody", {}, rows.map((a) => el("tr", {},
      el("td", {}, String(a.attempt)),
      el("td", {}, a.provider || ""),
      el("td", {}, a.outcome || "running",
        a.error ? el("div", { class: "attempt-error" }, `${a.error.code}: ${a.error.message || ""}`) : null),
      el("td", {}, `${shortTime(a.startedAt)}${a.finishedAt ? `–${shortTime(a.finishedAt)}` : ""}`))))));
}

function renderJob(job) {
  // Keep the keyboard focus on the same control across a live re-render.
  const focused = $("#job-body").contains(document.activeElement) ? document.activeElement.textContent : null;
  draw(job);
  shownPrint = detailPrint(job);
  if (focused) {
    const again = [...$("#job-body").querySelectorAll("button, a")].find((b) => b.textContent === focused);
    if (again) again.focus();
  }
}

function draw(job) {
  const final = FINAL.has(job.status);
  const percent = job.progress ? job.progress.percent || 0 : 0;
  const result = el("p", { class: "job-result", id: "job-result", role: "status" });
  const retry = el("button", { type: "button", class: "button", hidden: !final }, "Retry");
  // One key per job view: a second click after a lost answer gets the same child, not another.
  const retryKey = randomId();
  retry.addEventListener("click", async () => {
    retry.disabled = true;
    try {
      const child = await call(`/jobs/${job.id}/retry`, {
        method: "POST", headers: { "Idempotency-Key": retryKey },
      });
      toast(`Retry started: job #${child.id.slice(0, 8)}.`);
      live.kick();
      openJob(child.id);
    } catch (err) {
      result.textContent = `Retry failed: ${err.message}`;
      result.className = "job-result bad";
      retry.disabled = false;
    }
  });
  const cancel = el("button", { type: "button", class: "button danger", hidden: final || job.cancelRequested }, "Cancel job");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const after = await call(`/jobs/${job.id}/cancel`, { method: "POST" });
      renderJob(after);
      const now = $("#job-result");
      now.textContent = after.status === "canceled"
        ? "Canceled."
        : "Cancel requested: the job stops at its next stage.";
      now.className = "job-result ok";
      live.kick();
      if (!FINAL.has(after.status)) detailPoll.start();
    } catch (err) {
      result.textContent = `Not canceled: ${err.message}`;
      result.className = "job-result bad";
      cancel.disabled = false;
    }
  });
  const guest = job.guest || {};
  const modeLabel = (data.modes || []).find((m) => m.id === job.mode);
  const facts = [
    ["Guest", guest.name ? `${guest.name}${guest.whatsapp ? ` · ${guest.whatsapp}` : ""}` : "—"],
    ["Style", styleLabel(job.styleId)],
    ["Shape", modeLabel ? modeLabel.label : job.mode],
    ["Source", job.source + (job.boothId ? ` (booth ${job.boothId})` : "")],
    ["Provider", job.providerUsed || job.provider || "—"],
    ["Created", job.createdAt ? new Date(job.createdAt).toLocaleString() : ""],
    ["Finished", job.finishedAt ? new Date(job.finishedAt).toLocaleString() : "—"],
  ];
  const parent = job.parentJobId
    ? el("button", { type: "button", class: "linklike", onclick: () => openJob(job.parentJobId) },
      `Retry of job #${job.parentJobId.slice(0, 8)}`)
    : null;
  const parts = [
    el("div", { class: "job-head" }, chip(job.status),
      final ? null : el("span", {}, `${stageLabel(job.progress && job.progress.stage)} · ${percent}%`),
      job.cancelRequested && !final ? el("span", { class: "hint" }, "cancel requested") : null,
      parent),
    final ? null : el("progress", { max: 100, value: percent, "aria-label": "Job progress" }),
    stagesList(job),
    job.error ? el("p", { class: "form-error job-error" }, `${job.error.code}: ${job.error.message || ""}`) : null,
    el("div", { class: job.bestOutputUrl ? "job-split" : "" },
      job.bestOutputUrl
        ? el("figure", { class: "job-preview" },
          el("img", { src: job.bestOutputUrl, alt: `Styled photo of ${guest.name || "the guest"}` }))
        : null,
      el("dl", { class: "facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
    el("h3", {}, `Attempts (${job.attempts})`),
    attemptsTable(job),
    result,
    el("div", { class: "actions dialog-actions" },
      job.bestOutputUrl
        ? el("a", { class: "button secondary", href: job.bestOutputUrl, download: `photobot-${job.id.slice(0, 8)}.jpg` }, "Download")
        : null,
      retry, cancel,
      el("button", { type: "button", class: "button secondary", onclick: closeJob }, "Close")),
  ];
  $("#job-body").replaceChildren(...parts.filter(Boolean));
}

export function initQueue(context) {
  ctx = context;
  $("#queue-filters").addEventListener("submit", (e) => { e.preventDefault(); reload(); });
  $("#queue-status").addEventListener("change", reload);
  let timer = null;
  $("#queue-q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(reload, 350); });
  $("#queue-more").addEventListener("click", more);
  $("#job-close").addEventListener("click", closeJob);
  $("#job-dialog").addEventListener("close", () => { openId = null; detailPoll.stop(); });
  $("#job-dialog").addEventListener("click", (e) => { if (e.target === e.currentTarget) closeJob(); });
}
