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
  let drawing = null;    // {id, x, y} while a pointer is down
  let inFlight = false;
  let pending = null;    // {final} when the pad changed since the last request
  let lastSent = 0;
  let timer = null;

  // For scripts and tests: <section data-busy> is "false" once no reading is queued or running, and
  // data-answers counts the readings (or errors) shown so far.
  const section = pad.closest("section");
  function markBusy() { section.dataset.busy = String(inFlight || pending !== null); }
  function countAnswer() { section.dataset.answers = String(Number(section.dataset.answers || 0) + 1); }

  function reset() {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, pad.width, pad.height);
    blank = true;
    generation++;
    showIdle();
  }

  function point(e) {
    const r = pad.getBoundingClientRect();
    return { x: (e.clientX - r.left) * pad.width / r.width, y: (e.clientY - r.top) * pad.height / r.height };
  }

  function brush() { return Number(ui.brush ? ui.brush.value : 20); }

  pad.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    const p = point(e);
    drawing = { id: e.pointerId, ...p };
    ctx.fillStyle = INK;
    ctx.beginPath();
    ctx.arc(p.x, p.y, brush() / 2, 0, 2 * Math.PI);
    ctx.fill();
    blank = false;
    request(false);
  });

  pad.addEventListener("pointermove", (e) => {
    if (!drawing || e.pointerId !== drawing.id) return;
    e.preventDefault();
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    ctx.strokeStyle = INK;
    ctx.lineWidth = brush();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const ev of events.length ? events : [e]) {
      const p = point(ev);
      ctx.beginPath();
      ctx.moveTo(drawing.x, drawing.y);
      ctx.lineTo(p.x, p.y);
      ctx.stroke();
      drawing.x = p.x;
      drawing.y = p.y;
    }
    request(false);
  });

  function endStroke(e) {
    if (!drawing || e.pointerId !== drawing.id) return;
    drawing = null;
    request(true);
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  function request(final) {
    pending = { final: final || (pending && pending.final) };
    pump();
    markBusy();
  }

  async function pump() {
    if (inFlight || !pending) return;
    const wait = pending.final ? 0 : NUM_LIVE_INTERVAL_MS - (performance.now() - lastSent);
    if (wait > 0) {
      if (!timer) timer = setTimeout(() => { timer = null; pump(); }, wait);
      return;
    }
    pending = null;
    if (blank) {
      markBusy();
      return;
    }
    inFlight = true;
    lastSent = performance.now();
    const gen = generation;
    try {
      // Headless (and hidden) pages paint only when a frame is requested; toBlob would wait for one.
      await new Promise((resolve) => requestAnimationFrame(resolve));
      const blob = await new Promise((resolve, reject) =>
        pad.toBlob((b) => (b ? resolve(b) : reject(new Error("the pad could not be read"))), "image/png"));
      const response = await fetch("/api/predict?mode=number", {
        method: "POST", body: blob, headers: { "Content-Type": "image/png" } });
      let data;
      try {
        data = await response.json();
      } catch {
        throw new Error(`the server answered ${response.status} without JSON`);
      }
      if (!response.ok) {
        const err = new Error(data.detail || `the server answered ${response.status}`);
        err.kind = data.error;
        throw err;
      }
      if (gen === generation) show(data);
    } catch (err) {
      if (gen === generation) showError(err);
    } finally {
      inFlight = false;
      pump();
      markBusy();
    }
  }

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
  markBusy();
})();
