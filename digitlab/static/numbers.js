// digitlab's number pad: write a whole number, send the pad as a PNG to /api/predict?mode=number, and
// show the boxes the server found over the ink, each digit's answer under its box. No libraries.
"use strict";

(() => {
  const NUM_LIVE_INTERVAL_MS = 250;  // at most one live reading per this while writing (a number costs more)
  const INK = "#000";
  const PAPER = "#fff";
  const VERDICT_CLASSES = { digit: "ok", unsure: "unsure", not_a_digit: "nad" };

  const $ = (id) => document.getElementById(id);
  const pad = $("numcanvas");
  const overlay = $("numboxes");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  const octx = overlay.getContext("2d");
  const ui = { text: $("number"), status: $("number-status"), labels: $("num-labels"), brush: $("brush") };

  let blank = true;
  let generation = 0;    // bumped on clear: late answers for the old ink are dropped

  // For scripts and tests: <section data-busy> is "false" once no reading is queued or running, and
  // data-answers counts the readings (or errors) shown so far.
  const section = pad.closest("section");
  function countAnswer() { section.dataset.answers = String(Number(section.dataset.answers || 0) + 1); }
  const live = livePredictions({
    intervalMs: NUM_LIVE_INTERVAL_MS,
    isBlank: () => blank,
    generation: () => generation,
    read: async () => {
      const body = await canvasPng(pad, "pad");
      const init = { method: "POST", body, headers: { "Content-Type": "image/png" } };
      return readJson(await fetch("/api/predict?mode=number", init));
    },
    show,
    showError,
    showBusy: (busy) => { section.dataset.busy = String(busy); },
  });

  function reset() {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, pad.width, pad.height);
    blank = true;
    generation++;
    showIdle();
  }

  attachPen(ctx, {
    ink: INK,
    width: () => Number(ui.brush ? ui.brush.value : 20),
    onDown: () => {
      blank = false;
      live.request(false);
    },
    onMove: () => live.request(false),
    onEnd: () => live.request(true),
  });

  function digitText(d) {
    if (d.verdict === "not_a_digit") return "✗";
    return d.verdict === "unsure" ? `${d.label}?` : d.label;
  }

  function digitTitle(d) {
    const pct = `${(100 * d.confidence).toFixed(1)}%`;
    if (d.verdict === "not_a_digit") return `not a digit (best guess ${d.label}, ${pct})`;
    if (d.verdict === "unsure") return `not sure: ${d.label} or ${d.runner_up}? (${pct})`;
    return `${d.label}: ${pct}`;
  }

  function show(r) {
    countAnswer();
    const kx = overlay.width / r.width, ky = overlay.height / r.height;
    octx.clearRect(0, 0, overlay.width, overlay.height);
    octx.lineWidth = 3;
    ui.labels.replaceChildren(...r.digits.map((d, i) => {
      const b = d.box;
      octx.strokeStyle = d.verdict === "digit" ? "#1a7f37" : "#c62828";
      octx.strokeRect(b.left * kx, b.top * ky, b.width * kx, b.height * ky);
      const span = document.createElement("span");
      span.className = `num-digit ${VERDICT_CLASSES[d.verdict] || ""}`;
      span.style.left = `${(100 * (b.left + b.width / 2)) / r.width}%`;
      span.textContent = digitText(d);
      span.title = digitTitle(d);
      span.dataset.position = String(i);
      span.dataset.verdict = d.verdict;
      return span;
    }));
    ui.text.textContent = r.text;
    ui.text.dataset.text = r.text;
    ui.status.className = "";
    const doubts = r.unsure_positions.map((i) => `digit ${i + 1}: ${digitTitle(r.digits[i])}`);
    ui.status.textContent = doubts.length
      ? doubts.join("; ")
      : `${r.digits.length} digit${r.digits.length === 1 ? "" : "s"}, ${(100 * r.confidence).toFixed(1)}% sure ` +
        `(server ${r.time_ms.toFixed(1)} ms)`;
  }

  function showIdle() {
    octx.clearRect(0, 0, overlay.width, overlay.height);
    ui.labels.replaceChildren();
    ui.text.textContent = "";
    delete ui.text.dataset.text;
    ui.status.className = "";
    ui.status.textContent = "Write a number here, digits side by side.";
  }

  function showError(err) {
    countAnswer();
    octx.clearRect(0, 0, overlay.width, overlay.height);
    ui.labels.replaceChildren();
    ui.text.textContent = "";
    delete ui.text.dataset.text;
    ui.status.className = err.kind === "no_digit" ? "" : "error";
    ui.status.textContent = err.message || String(err);
  }

  $("num-clear").addEventListener("click", reset);
  reset();
  live.markBusy();
})();
