// fsa app --source: the server's own camera, file or stream, annotated (GET /api/stream, MJPEG).
// Shown only when /api/info names a source; the classes box drives it live (POST /api/stream/classes,
// debounced); frame rate, latency and dropped frames come from GET /api/stream/info once a second.
// Separate from app.js: the page's own modes (photos, the browser's camera) are untouched.
(async function liveSource() {
  const info = await (await fetch("/api/info")).json().catch(() => ({}));
  if (!info.source) return;
  const section = document.createElement("section");
  section.id = "live-source";
  section.innerHTML = '<h2>Server source <code></code></h2>' +
    '<img id="live-stream" alt="annotated stream of the server\'s source">' +
    '<p id="live-stats" role="status" aria-live="polite">waiting for the first frame…</p>';
  section.querySelector("code").textContent = info.source;
  document.querySelector("main").prepend(section);
  section.querySelector("img").src = "/api/stream";
  const stats = section.querySelector("#live-stats");
  const classes = document.getElementById("classes");
  const probThd = document.getElementById("prob-thd");
  let timer = null;
  async function send() {
    const body = { classes: classes.value };
    if (probThd && probThd.value !== "") body.prob_thd = Number(probThd.value);
    const r = await fetch("/api/stream/classes", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!r.ok) stats.textContent = "classes refused: " + ((await r.json()).error || r.status);
  }
  for (const box of [classes, probThd]) {
    if (box) box.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(send, 400); });
  }
  async function poll() {
    try {
      const s = await (await fetch("/api/stream/info")).json();
      stats.dataset.framesDone = s.frames_done;
      stats.dataset.classes = s.classes;
      const fps = s.frames_per_s == null ? "–" : s.frames_per_s.toFixed(1);
      const lat = s.latency_ms == null ? "–" : Math.round(s.latency_ms);
      stats.textContent = `${fps} frames/s, latency ${lat} ms, ${s.frames_done} frames, ` +
        `${s.frames_dropped} dropped` + (s.error ? ` (${s.error})` : "");
    } catch (e) { stats.textContent = "stream info unavailable: " + e; }
  }
  setInterval(poll, 1000);
  poll();
})();
