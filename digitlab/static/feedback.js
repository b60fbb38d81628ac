// Corrections on the drawing page: after each answer, "right" or "wrong, it is a [0-9]", sent with the
// drawing to POST /api/feedback (digitlab.feedback_api). Keys: Y = right, 0-9 = it is that digit.
// A stored correction can be taken back (DELETE /api/feedback/{id}). Standalone: it watches app.js's
// answer (#digit's data-digit) and reads the canvas; app.js knows nothing of it.
"use strict";

(() => {
  const digit = document.getElementById("digit");
  const canvas = document.getElementById("canvas");
  const answer = digit && digit.closest(".answer");
  if (!digit || !canvas || !answer) return;

  const bar = document.createElement("div");
  bar.id = "feedback";
  bar.className = "feedback";
  // Shown and hidden with visibility, not display: its space is kept, so an answer arriving mid-stroke
  // never moves the pad under a phone user's finger.
  bar.classList.add("off");
  bar.setAttribute("aria-label", "tell the model whether it read your digit right");
  const right = button("right", "Right (Y)", () => send(Number(digit.dataset.digit)));
  bar.append(right, text(" wrong, it is a "));
  for (let d = 0; d <= 9; d++) bar.append(button(String(d), `It is a ${d} (key ${d})`, () => send(d)));
  const note = text("");
  note.id = "feedback-status";
  note.setAttribute("role", "status");
  const undo = button("take it back", "Delete the correction just sent", () => takeBack());
  undo.hidden = true;
  bar.append(document.createElement("br"), note, text(" "), undo);
  answer.after(bar);

  let lastId = null;
  let sentFor = null;  // the answer count a correction was sent for: one per answer

  function button(label, title, onclick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.title = title;
    b.dataset.feedback = label;
    b.addEventListener("click", onclick);
    return b;
  }

  function text(s) {
    const span = document.createElement("span");
    span.textContent = s;
    return span;
  }

  function answerCount() { return document.body.dataset.answers || "0"; }

  // Offer the choice whenever app.js shows a digit; hide it when there is none.
  new MutationObserver(() => {
    const shown = digit.dataset.digit !== undefined;
    bar.classList.toggle("off", !shown);
    if (shown && sentFor !== answerCount()) {
      note.textContent = "";
      undo.hidden = true;
    }
  }).observe(digit, { attributes: true, attributeFilter: ["data-digit"], childList: true });

  async function canvasBase64() {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  async function send(label) {
    if (bar.classList.contains("off") || !Number.isInteger(label) || sentFor === answerCount()) return;
    sentFor = answerCount();
    note.textContent = "sending...";
    try {
      const r = await fetch("/api/feedback", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ label, image: await canvasBase64() }),
      });
      const data = await r.json();
      if (!r.ok) throw new Error(data.detail || `HTTP ${r.status}`);
      lastId = data.id;
      const stats = await (await fetch("/api/feedback/stats")).json();
      const acc = stats.model_accuracy === null ? "" : `, the model read ${(100 * stats.model_accuracy).toFixed(0)}% right`;
      note.textContent = `thanks: kept as a ${label} (#${data.id}; ${stats.total} corrections so far${acc})`;
      bar.dataset.total = String(stats.total);
      undo.hidden = false;
    } catch (err) {
      sentFor = null;
      note.textContent = `not stored: ${err.message}`;
    }
  }

  async function takeBack() {
    if (lastId === null) return;
    const r = await fetch(`/api/feedback/${lastId}`, { method: "DELETE" });
    note.textContent = r.ok ? `correction #${lastId} deleted` : `could not delete #${lastId}`;
    if (r.ok) { lastId = null; undo.hidden = true; sentFor = null; }
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || bar.classList.contains("off")) return;
    if (e.target.matches && e.target.matches("input, textarea")) return;
    if (/^[0-9]$/.test(e.key)) send(Number(e.key));
    else if (e.key.toLowerCase() === "y") send(Number(digit.dataset.digit));
  });
})();
