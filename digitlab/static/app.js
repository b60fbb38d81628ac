// digitlab's drawing page: draw dark on light, send the canvas as a PNG to /api/predict, and let the
// server normalise it as MNIST was made (the same code as `digitlab predict`). No libraries.
"use strict";

const LIVE_INTERVAL_MS = 150;  // at most one live prediction per this while drawing
const UNDO_DEPTH = 40;         // snapshots kept for undo
const INK = "#000";
const PAPER = "#fff";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const ui = {
  digit: $("digit"), confidence: $("confidence"), status: $("status"), bars: $("bars"), seen: $("seen"),
  timing: $("timing"), brush: $("brush"), brushOut: $("brush-out"),
  file: $("file"), drop: $("drop"), modelInfo: $("model-info"),
};

let classNames = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let blank = true;          // nothing on the canvas: nothing to send
let undoStack = [];        // [{image: ImageData, blank}]
let generation = 0;        // bumped when the canvas is replaced: late answers for the old one are dropped

// ------------------------------------------------------------------ the canvas

function resetCanvas() {
  ctx.fillStyle = PAPER;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  blank = true;
}

function snapshot() {
  undoStack.push({ image: ctx.getImageData(0, 0, canvas.width, canvas.height), blank });
  if (undoStack.length > UNDO_DEPTH) undoStack.shift();
}

attachPen(ctx, {
  ink: INK,
  width: () => Number(ui.brush.value),
  beforeStroke: snapshot,
  onDown: () => {
    blank = false;
    live.request(false);
  },
  onMove: () => live.request(false),
  onEnd: () => live.request(true),  // the final answer for the finished stroke
});

function clearAll() {
  snapshot();
  resetCanvas();
  generation++;
  showIdle("Draw a digit.");
}

function undo() {
  const last = undoStack.pop();
  if (!last) return;
  ctx.putImageData(last.image, 0, 0);
  blank = last.blank;
  generation++;
  if (blank) showIdle("Draw a digit."); else live.request(true);
}

// ------------------------------------------------------------------ predictions

// For scripts and tests: <body data-busy> is "false" once no prediction is queued or running,
// and data-answers counts the answers (or errors) shown so far.
const live = livePredictions({
  intervalMs: LIVE_INTERVAL_MS,
  isBlank: () => blank,
  generation: () => generation,
  read: async () => postPredict(await canvasPng(canvas, "canvas"), "image/png"),
  show: showPrediction,
  showError,
  showBusy: (busy) => { document.body.dataset.busy = String(busy); },
});

function countAnswer() {
  document.body.dataset.answers = String(Number(document.body.dataset.answers || 0) + 1);
}

async function postPredict(body, type) {
  const started = performance.now();
  const init = { method: "POST", body };
  if (type) init.headers = { "Content-Type": type };
  const response = await fetch("/api/predict", init);
  const data = await readJson(response);
  data.roundTripMs = performance.now() - started;
  return data;
}

// ------------------------------------------------------------------ showing results

function buildBars() {
  ui.bars.replaceChildren(...classNames.map((name, i) => {
    const li = document.createElement("li");
    li.dataset.digit = String(i);
    li.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span><span class="pct">0%</span>';
    li.querySelector(".label").textContent = name;
    li.title = name;
    return li;
  }));
}

function setBars(probabilities, winner) {
  ui.bars.querySelectorAll("li").forEach((li, i) => {
    const p = probabilities ? probabilities[i] : 0;
    li.style.setProperty("--p", p.toFixed(4));
    li.querySelector(".pct").textContent = probabilities ? `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%` : "";
    li.classList.toggle("winner", i === winner);
    li.setAttribute("aria-label", `${classNames[i]}: ${(100 * p).toFixed(1)} percent`);
  });
}

// The verdict (issue 11) is a state, not an error: "not a digit", "not sure: 7 or 1?".
function verdictText(v) {
  if (v.kind === "not_a_digit") return "not a digit";
  if (v.kind === "unsure") return `not sure: ${classNames[v.best]} or ${classNames[v.runner_up]}?`;
  return v.kind === "blank" ? "blank: draw a digit" : "";
}

function showPrediction(r) {
  countAnswer();
  const kind = r.verdict ? r.verdict.kind : "digit";
  ui.digit.dataset.verdict = kind;
  ui.digit.textContent = kind === "not_a_digit" ? "✗" : kind === "unsure" ? `${r.label}?` : r.label;
  if (kind === "not_a_digit") delete ui.digit.dataset.digit; else ui.digit.dataset.digit = String(r.digit);
  const pct = `${(100 * r.probabilities[r.digit]).toFixed(1)}%`;
  ui.confidence.textContent = kind === "not_a_digit" ? `best guess ${r.label} (${pct})` : `${pct} sure`;
  const runnerUp = r.top3[1];
  ui.status.className = kind === "digit" ? "" : "verdict";
  delete ui.status.dataset.sample;
  ui.status.textContent = kind !== "digit" ? verdictText(r.verdict)
    : runnerUp ? `next: ${runnerUp.label} (${(100 * runnerUp.probability).toFixed(1)}%)` : "";
  setBars(r.probabilities, kind === "not_a_digit" ? -1 : r.digit);  // no winner: it is not a digit
  ui.seen.src = r.image;
  const rt = r.roundTripMs ? `, ${r.roundTripMs.toFixed(0)} ms round trip` : "";
  ui.timing.textContent = `server ${r.time_ms.toFixed(1)} ms (model ${r.model_ms.toFixed(1)} ms${rt})`;
}

function showIdle(message) {
  ui.digit.textContent = "?";
  delete ui.digit.dataset.digit;
  delete ui.digit.dataset.verdict;
  ui.confidence.textContent = "";
  ui.status.className = "";
  delete ui.status.dataset.sample;
  ui.status.textContent = message;
  setBars(null, -1);
  ui.seen.removeAttribute("src");
  ui.timing.textContent = "";
}

function showError(err) {
  countAnswer();
  ui.digit.textContent = "?";
  delete ui.digit.dataset.digit;
  ui.confidence.textContent = "";
  setBars(null, -1);
  ui.seen.removeAttribute("src");
  // A blank picture is a verdict too (the API answers 422 no_digit, as `digitlab predict` reports it).
  ui.digit.dataset.verdict = err.kind === "no_digit" ? "blank" : "error";
  ui.status.className = err.kind === "no_digit" ? "verdict" : "error";
  delete ui.status.dataset.sample;
  ui.status.textContent = err.message || String(err);
  ui.timing.textContent = "";
}

// ------------------------------------------------------------------ test digits and uploads

function revealAnswer() {
  // On a phone the answer sits above the pad and the buttons below it: bring the answer into view.
  ui.digit.closest("section").scrollIntoView({ block: "nearest", behavior: "smooth" });
}

async function showSample() {
  generation++;
  const gen = generation;
  ui.status.className = "";
  ui.status.textContent = "fetching a test digit…";
  try {
    const s = await readJson(await fetch("/api/sample"));
    if (gen !== generation) return;
    snapshot();
    drawPixels(s.pixels);
    showPrediction(s.prediction);
    const right = s.prediction.digit === s.true_digit;
    const mark = document.createElement("span");
    mark.className = right ? "right" : "wrong";
    mark.textContent = right ? "✓ right" : "✗ wrong";
    ui.status.replaceChildren(`Test image #${s.index}: true label ${s.true_label}, the model says ${s.prediction.label} `, mark);
    ui.status.dataset.sample = String(s.index);
    revealAnswer();
  } catch (err) {
    if (gen === generation) showError(err);
  }
}

function drawPixels(pixels) {
  // The test image is ink bright on black; the pad is dark on light, so it is shown inverted.
  const small = document.createElement("canvas");
  small.width = pixels[0].length;
  small.height = pixels.length;
  const sctx = small.getContext("2d");
  const img = sctx.createImageData(small.width, small.height);
  pixels.flat().forEach((v, i) => {
    img.data.set([255 - v, 255 - v, 255 - v, 255], 4 * i);
  });
  sctx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true;
  blank = false;
}

async function readFile(file) {
  if (!file) return;
  generation++;
  const gen = generation;
  ui.status.className = "";
  ui.status.textContent = `reading ${file.name}…`;
  snapshot();
  await drawFile(file);
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const result = await postPredict(form, null);  // the original file, not the pad's copy of it
    if (gen === generation) showPrediction(result);
  } catch (err) {
    if (gen === generation) showError(new Error(`${file.name}: ${err.message}`));
  }
  revealAnswer();
}

async function drawFile(file) {
  // Shown on the pad, fitted inside it, so the user can see (and draw on) what was read.
  try {
    const bitmap = await createImageBitmap(file);
    const k = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
    const w = bitmap.width * k, h = bitmap.height * k;
    resetCanvas();
    ctx.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    bitmap.close();
    blank = false;
  } catch {
    // A format the browser can't show (TIFF, say) is still sent: the server may read it.
  }
}

// ------------------------------------------------------------------ controls

$("clear").addEventListener("click", clearAll);
$("undo").addEventListener("click", undo);
$("sample").addEventListener("click", showSample);
$("upload").addEventListener("click", () => ui.file.click());
ui.file.addEventListener("change", () => {
  readFile(ui.file.files[0]);
  ui.file.value = "";  // choosing the same file again fires change again
});
ui.brush.addEventListener("input", () => { ui.brushOut.textContent = ui.brush.value; });

ui.drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  ui.drop.classList.add("dragging");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("dragging"));
ui.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("dragging");
  readFile(e.dataTransfer.files[0]);
});

document.addEventListener("keydown", (e) => {
  const typing = e.target.matches && e.target.matches("input[type=text], input[type=number], textarea");
  if (typing) return;
  const key = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && key === "z" && !e.shiftKey) {
    e.preventDefault();
    undo();
  } else if (e.ctrlKey || e.metaKey || e.altKey) {
    return;
  } else if (key === "escape" || key === "c") {
    clearAll();
  } else if (key === "u") {
    undo();
  } else if (key === "s") {
    showSample();
  }
});

// ------------------------------------------------------------------ start

async function loadModelInfo() {
  try {
    const m = await readJson(await fetch("/api/model"));
    classNames = m.class_names;
    buildBars();
    setBars(null, -1);
    const acc = m.test_accuracy == null ? "not evaluated" : `${(100 * m.test_accuracy).toFixed(2)}%`;
    ui.modelInfo.replaceChildren();
    const b = document.createElement("b");
    b.textContent = m.name;
    ui.modelInfo.append("model ", b, ` · test accuracy ${acc} · `);
    if (m.report_url) {
      const a = document.createElement("a");
      a.href = m.report_url;
      a.textContent = "report";
      ui.modelInfo.append(a, " · ");
    }
    const docs = document.createElement("a");
    docs.href = "/docs";
    docs.textContent = "API";
    ui.modelInfo.append(docs);
  } catch (err) {
    ui.modelInfo.textContent = `could not load the model's details: ${err.message}`;
  }
}

resetCanvas();
buildBars();
setBars(null, -1);
live.markBusy();
loadModelInfo();
