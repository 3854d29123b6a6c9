// The colorizer page: sends photos to POST api/colorize (a few at a time, so the server can
// batch them), shows each gray-in beside colour-out or under a before/after slider, and the
// model's details from GET api/health. No external scripts: the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const PARALLEL = 4;          // uploads in flight from this page
const queue = [];            // cards waiting to be sent
let inFlight = 0, total = 0, finished = 0, limits = null;

function fmt(value, digits = 3) {
  return typeof value === "number" ? Number(value.toPrecision(digits)).toString() : "–";
}

function showModel(health) {
  const m = health.model || {};
  limits = health.limits;
  const box = $("model");
  box.textContent = "";
  const line = document.createElement("p");
  line.textContent = `Model: ${m.experiment ?? "?"} (${m.task ?? "?"}), step ${m.step ?? "?"}, ` +
    `trained at ${m.image_size ?? health.image_size} px, from a ${m.source ?? "run"}.`;
  box.append(line);
  const metrics = m.metrics;
  if (metrics && metrics.model) {
    const gray = metrics.gray_baseline || {};
    const table = document.createElement("table");
    table.id = "metrics";
    const head = table.insertRow();
    for (const h of ["validation metric (strength 1)", "model", "gray baseline"]) {
      const th = document.createElement("th"); th.textContent = h; head.append(th);
    }
    for (const [name, value] of Object.entries(metrics.model)) {
      const row = table.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = fmt(value);
      row.insertCell().textContent = fmt(gray[name]);
    }
    box.append(table);
  } else {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No validation metrics were recorded for this checkpoint.";
    box.append(p);
  }
  const size = $("render-size");
  size.value = health.image_size;
  size.max = limits.max_render_size;
  const strength = $("colour-strength");
  strength.max = health.max_colour_strength ?? 2;
  strength.value = health.colour_strength ?? 1;
  showStrength();
  const calibration = m.calibration;
  $("colour-strength-default").textContent = calibration ?
    `(calibrated: ${fmt(calibration.colour_strength)}, on ${calibration.n} ${calibration.split} ` +
    "images)" : "(not calibrated: 1 = the model's own colours)";
  $("limits").textContent = `JPEG, PNG, WebP, TIFF, BMP; up to ` +
    `${fmt(limits.max_upload_bytes / 1048576)} MiB and ${fmt(limits.max_pixels / 1e6)} ` +
    `megapixels per photo.`;
}

async function loadHealth() {
  try {
    const response = await fetch("api/health");
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    showModel(await response.json());
  } catch (error) {
    $("model").textContent = `Could not read the model's details (${error.message}).`;
  }
}

function showStrength() {
  $("colour-strength-value").textContent = Number($("colour-strength").value).toFixed(2);
}

function updateProgress() {
  const box = $("progress");
  box.hidden = total === 0;
  $("progress-bar").max = Math.max(total, 1);
  $("progress-bar").value = finished;
  const working = total - finished;
  $("progress-text").textContent = `${finished} of ${total} done` +
    (working ? `, ${working} in progress` : "");
}

function setState(card, state, status) {
  card.dataset.state = state;
  card.querySelector(".status").textContent = status;
}

function addCard(file) {
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  const input = URL.createObjectURL(file);
  card.querySelector("img.gray").src = input;
  card.querySelector("img.over").src = input;
  card.file = file;
  const split = card.querySelector(".split");
  split.addEventListener("input", () => {
    card.querySelector(".over").style.clipPath = `inset(0 ${100 - split.value}% 0 0)`;
  });
  applyView(card);
  $("results").prepend(card);
  return card;
}

function applyView(card) {
  const slider = $("view").value === "slider";
  card.querySelector(".pair").hidden = slider;
  card.querySelector(".compare").hidden = !slider;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON: fall through */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

async function send(card) {
  const format = $("format").value;
  const params = new URLSearchParams({ format });
  const size = parseInt($("render-size").value, 10);
  if (Number.isFinite(size)) params.set("render_size", size);
  params.set("colour_strength", $("colour-strength").value);
  const form = new FormData();
  form.append("file", card.file, card.file.name);
  setState(card, "working", "colorizing…");
  try {
    const response = await fetch(`api/colorize?${params}`, { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const url = URL.createObjectURL(await response.blob());
    if (card.resultUrl) URL.revokeObjectURL(card.resultUrl);  // a repaint replaces it
    card.resultUrl = url;
    card.querySelector("img.result").src = url;
    card.querySelector("img.under").src = url;
    const link = card.querySelector(".download");
    link.href = url;
    link.download = card.file.name.replace(/\.[^.]*$/, "") + "-colorized." +
      (format === "jpeg" ? "jpg" : "png");
    link.hidden = false;
    await card.querySelector("img.result").decode().catch(() => {});
    setState(card, "done", "done");
  } catch (error) {
    const message = error instanceof TypeError ?
      "could not reach the server (is it still running?)" : error.message;
    card.querySelector(".error").textContent = message;
    card.querySelector(".error").hidden = false;
    setState(card, "error", "failed");
  }
}

function pump() {
  while (inFlight < PARALLEL && queue.length) {
    const card = queue.shift();
    inFlight += 1;
    send(card).finally(() => {
      inFlight -= 1; finished += 1; updateProgress(); pump();
    });
  }
  updateProgress();
}

function addFiles(files) {
  for (const file of files) {
    total += 1;
    queue.push(addCard(file));
  }
  pump();
}

$("files").addEventListener("change", (event) => {
  addFiles(event.target.files);
  event.target.value = "";
});
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer.files); });
$("view").addEventListener("change", () => document.querySelectorAll(".card").forEach(applyView));
$("colour-strength").addEventListener("input", showStrength);
$("colour-strength").addEventListener("change", () => {  // repaint what is done
  for (const card of document.querySelectorAll(".card[data-state=done]")) {
    setState(card, "queued", "waiting");
    total += 1;
    queue.push(card);
  }
  pump();
});
$("clear").addEventListener("click", () => {
  document.querySelectorAll(".card:not([data-state=queued]):not([data-state=working])")
    .forEach((card) => card.remove());
  if (!queue.length && !inFlight) { total = 0; finished = 0; }
  updateProgress();
});
loadHealth();
