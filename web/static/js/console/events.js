// Event admin: create, edit the selected event, its frame, and photographer bulk upload
// (one file per request so each has its own progress bar; two at a time).
import { $, el, toast } from "../common.js";
import { call, upload } from "./session.js";
import { data, showError } from "./ui.js";

let ctx = null;
const CONCURRENCY = 2;

function styleOptions(select, selected) {
  select.replaceChildren(
    el("option", { value: "" }, "None (original photo)"),
    ...(data.styles || []).filter((s) => s.id !== "original").map((s) => el("option", { value: s.id }, s.label)),
  );
  select.value = selected || "";
}

/** Fill the edit form from the selected event. */
export function showEvent(event) {
  if (!event) return;
  $("#edit-name").value = event.name;
  $("#edit-visibility").value = event.visibility;
  styleOptions($("#edit-style"), event.settings && event.settings.defaultStyle);
  const links = $("#edit-links");
  links.replaceChildren(
    `Address /e/${event.slug} · `,
    el("a", { href: `/e/${encodeURIComponent(event.slug)}/join`, target: "_blank", rel: "noopener" }, "Join page"),
    " · ",
    el("a", { href: `/e/${encodeURIComponent(event.slug)}`, target: "_blank", rel: "noopener" }, "Gallery"),
  );
  const frame = event.settings && event.settings.frameKey;
  $("#frame-current").textContent = frame
    ? "A frame is set: it is laid over every styled photo. Upload another PNG to replace it."
    : "No frame yet. A transparent PNG laid over every styled photo.";
  showError($("#edit-error"), "");
}

async function save(e) {
  e.preventDefault();
  const event = ctx.event();
  const error = $("#edit-error");
  showError(error, "");
  const name = $("#edit-name").value.trim();
  if (!name) { showError(error, "The event needs a name."); $("#edit-name").focus(); return; }
  const button = $("#edit-submit");
  button.disabled = true;
  try {
    const updated = await call(`/events/${encodeURIComponent(event.slug)}`, {
      method: "PATCH",
      body: {
        name,
        visibility: $("#edit-visibility").value,
        settings: { defaultStyle: $("#edit-style").value || null },
      },
    });
    ctx.eventUpdated(updated);
    toast(`Saved ${updated.name}.`);
  } catch (err) {
    showError(error, err.message);
  } finally {
    button.disabled = false;
  }
}

async function create(e) {
  e.preventDefault();
  const error = $("#create-error");
  showError(error, "");
  const name = $("#create-name").value.trim();
  const slug = $("#create-slug").value.trim();
  if (!name) { showError(error, "Give the event a name."); $("#create-name").focus(); return; }
  const style = $("#create-style").value;
  const body = { name, visibility: $("#create-visibility").value };
  if (slug) body.slug = slug;
  if (style) body.settings = { defaultStyle: style };
  const button = $("#create-submit");
  button.disabled = true;
  try {
    const event = await call("/events", { method: "POST", body });
    $("#create-form").reset();
    ctx.eventCreated(event);
    toast(`Created ${event.name}; it is now the selected event.`);
  } catch (err) {
    showError(error, err.message);
  } finally {
    button.disabled = false;
  }
}

async function uploadFrame(e) {
  e.preventDefault();
  const error = $("#frame-error");
  showError(error, "");
  const file = $("#frame-file").files[0];
  if (!file) { showError(error, "Choose a PNG file first."); return; }
  const bar = $("#frame-bar");
  bar.hidden = false;
  bar.value = 0;
  const button = $("#frame-submit");
  button.disabled = true;
  const form = new FormData();
  form.append("frame", file, file.name);
  try {
    const event = await upload(`/events/${encodeURIComponent(ctx.event().slug)}/frame`, form, {
      method: "PUT", onProgress: (f) => { bar.value = Math.round(f * 100); },
    });
    $("#frame-file").value = "";
    ctx.eventUpdated(event);
    toast("Frame uploaded.");
  } catch (err) {
    showError(error, err.message);
  } finally {
    bar.hidden = true;
    button.disabled = false;
  }
}

// --- photographer bulk upload ------------------------------------------------------------------
function sizeText(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

function bulkMessage(err) {
  if (err.network) return "Not sent: no connection to the booth.";
  if (err.status === 422) {
    // The bulk route answers {photos, errors: [{filename, error: {code, message}}]}.
    const reason = err.data?.errors?.[0]?.error?.message;
    return `Refused: ${reason || "not a photo the booth can read."}`;
  }
  return `Failed: ${err.message}`;
}

async function uploadOne(item, slug) {
  item.row.dataset.state = "uploading";
  item.status.textContent = "Uploading…";
  item.bar.value = 0;
  item.retry.hidden = true;
  const form = new FormData();
  form.append("photos", item.file, item.file.name);
  try {
    const body = await upload(`/events/${encodeURIComponent(slug)}/photos`, form, {
      onProgress: (f) => { item.bar.value = Math.round(f * 99); },
    });
    item.bar.value = 100;
    const photo = body.photos && body.photos[0];
    item.row.dataset.state = "done";
    item.status.textContent = photo && !photo.created ? "Already in the gallery" : "Published";
    return true;
  } catch (err) {
    item.row.dataset.state = "failed";
    item.status.textContent = bulkMessage(err);
    item.retry.hidden = !(err.network || err.status >= 500 || err.status === 429);
    return false;
  }
}

async function runQueue(items, slug) {
  const waiting = [...items];
  let ok = 0;
  const worker = async () => {
    while (waiting.length) {
      if (await uploadOne(waiting.shift(), slug)) ok += 1;
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, items.length) }, worker));
  return ok;
}

async function bulk(e) {
  e.preventDefault();
  const error = $("#bulk-error");
  showError(error, "");
  const input = $("#bulk-files");
  const files = [...input.files];
  if (!files.length) { showError(error, "Choose one or more photos first."); return; }
  const slug = ctx.event().slug;
  const list = $("#bulk-list");
  const items = files.map((file) => {
    const bar = el("progress", { max: 100, value: 0, "aria-label": `Upload of ${file.name}` });
    const status = el("span", { class: "bulk-status" }, "Waiting");
    const retry = el("button", { type: "button", class: "button secondary small", hidden: true }, "Retry");
    const row = el("li", { class: "bulk-row", dataset: { state: "waiting" } },
      el("div", { class: "bulk-line" },
        el("span", { class: "bulk-name" }, file.name),
        el("span", { class: "hint" }, sizeText(file.size))),
      bar,
      el("div", { class: "bulk-line" }, status, retry));
    const item = { file, bar, status, retry, row };
    retry.addEventListener("click", () => uploadOne(item, slug));
    return item;
  });
  list.replaceChildren(...items.map((i) => i.row));
  input.value = "";
  const button = $("#bulk-submit");
  button.disabled = true;
  $("#bulk-summary").textContent = `Uploading ${files.length} photo${files.length > 1 ? "s" : ""} to ${slug}…`;
  const ok = await runQueue(items, slug);
  button.disabled = false;
  $("#bulk-summary").textContent = `${ok} of ${files.length} uploaded to the ${slug} gallery.`;
}

export function initEvents(context) {
  ctx = context;
  styleOptions($("#create-style"), "");
  $("#edit-form").addEventListener("submit", save);
  $("#create-form").addEventListener("submit", create);
  $("#frame-form").addEventListener("submit", uploadFrame);
  $("#bulk-form").addEventListener("submit", bulk);
}
