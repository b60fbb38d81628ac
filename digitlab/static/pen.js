// What the two pads share (app.js's digit pad, numbers.js's number pad): the pen that draws on a canvas with
// the mouse, a pen or a finger, and the live reading of the pad while it is drawn on. No libraries.
"use strict";

// Draws round strokes `width()` canvas pixels wide in `ink` on ctx's canvas. The hooks keep each page's state
// its own: beforeStroke runs before a stroke's first mark (app.js takes its undo snapshot there), onDown once
// that mark is drawn, onMove after the stroke grows, onEnd when it is finished (the pointer up or cancelled).
function attachPen(ctx, { ink, width, beforeStroke = () => {}, onDown, onMove, onEnd }) {
  const canvas = ctx.canvas;
  let drawing = null;  // {id, x, y} while a pointer is down

  // Canvas units: the canvas's CSS size may differ from its pixel size (a phone, a high-DPI screen).
  function point(e) {
    const r = canvas.getBoundingClientRect();
    return { x: (e.clientX - r.left) * canvas.width / r.width, y: (e.clientY - r.top) * canvas.height / r.height };
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    beforeStroke();
    const p = point(e);
    drawing = { id: e.pointerId, ...p };
    // A tap leaves a mark (a zero-length line draws nothing in some browsers).
    ctx.fillStyle = ink;
    ctx.beginPath();
    ctx.arc(p.x, p.y, width() / 2, 0, 2 * Math.PI);
    ctx.fill();
    onDown();
  });

  canvas.addEventListener("pointermove", (e) => {
    if (!drawing || e.pointerId !== drawing.id) return;
    e.preventDefault();
    ctx.strokeStyle = ink;
    ctx.lineWidth = width();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    // Coalesced events keep fast strokes smooth where the browser batches pointer moves.
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const p = point(ev);
      ctx.beginPath();
      ctx.moveTo(drawing.x, drawing.y);
      ctx.lineTo(p.x, p.y);
      ctx.stroke();
      drawing.x = p.x;
      drawing.y = p.y;
    }
    onMove();
  });

  function endStroke(e) {
    if (!drawing || e.pointerId !== drawing.id) return;
    drawing = null;
    onEnd();
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
}

// Reads the pad while it is drawn on: request(false) at most once per intervalMs while strokes go on,
// request(true) (a finished stroke) at once; never two readings in flight, none of a blank pad. An answer
// that comes back after the page bumped its generation (the pad was cleared or replaced) is dropped.
// showBusy(busy) tells scripts and tests whether a reading is queued or running (markBusy shows it now).
function livePredictions({ intervalMs, isBlank, generation, read, show, showError, showBusy }) {
  let inFlight = false;
  let pending = null;  // {final} when the pad changed since the last request
  let lastSent = 0;
  let timer = null;

  function markBusy() {
    showBusy(inFlight || pending !== null);
  }

  function request(final) {
    pending = { final: final || (pending && pending.final) };
    pump();
    markBusy();
  }

  async function pump() {
    if (inFlight || !pending) return;
    const wait = pending.final ? 0 : intervalMs - (performance.now() - lastSent);
    if (wait > 0) {
      if (!timer) timer = setTimeout(() => { timer = null; pump(); }, wait);
      return;
    }
    pending = null;
    if (isBlank()) {
      markBusy();
      return;
    }
    inFlight = true;
    lastSent = performance.now();
    const gen = generation();
    try {
      const result = await read();
      if (gen === generation()) show(result);
    } catch (err) {
      if (gen === generation()) showError(err);
    } finally {
      inFlight = false;
      pump();
      markBusy();
    }
  }

  return { request, markBusy };
}

// The canvas as a PNG blob; `name` says which in the error.
async function canvasPng(canvas, name) {
  // Headless (and hidden) pages paint only when a frame is requested; toBlob would wait for one.
  await new Promise((resolve) => requestAnimationFrame(resolve));
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error(`the ${name} could not be read`))), "image/png"));
}

// An API answer's JSON; an error answer is thrown, its `kind` the API's error code.
async function readJson(response) {
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
  return data;
}
