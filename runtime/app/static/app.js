// fsa app: the page. Plain browser JavaScript, no build step. It talks to GET /api/info,
// GET /api/samples and POST /api/segment (multipart image, classes, optional prob_thd). The overlay
// is composited here from the photo and the label PNG (a palette PNG, unlabelled pixels transparent).
"use strict";

const $ = (id) => document.getElementById(id);
const el = {
  image: $("image"), drop: $("drop"), samples: $("samples"), classes: $("classes"), probThd: $("prob-thd"),
  segment: $("segment"), camera: $("camera"), cameraSelect: $("camera-select"), status: $("status"), fps: $("fps"),
  overlay: $("overlay"), empty: $("empty"), opacity: $("opacity"), labelmap: $("labelmap"), legend: $("legend"),
  timings: $("timings"), downloads: $("downloads"), thumbs: $("thumbs"), info: $("info"), weights: $("weights"),
  video: $("video"),
};
const STORE = "fsa-app-classes";  // localStorage: the last classes segmented
const state = {
  info: null, pending: [], results: [], current: -1, run: null, live: null, frames: [], highlight: null,
};

function setStatus(text, isError = false) {
  el.status.textContent = text;
  el.status.classList.toggle("error", isError);
}

// #status data-done: images finished (shown, failed or cancelled), for scripts that wait on the page
function countDone() {
  el.status.dataset.done = String(Number(el.status.dataset.done || 0) + 1);
}

function stem(name) {
  const base = name.split(/[\\/]/).pop() || "image";
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

// The server's one-line errors, said for people: the file is named once (by the page), no library names.
function friendly(message, name) {
  let m = String(message || "");
  if (name && m.startsWith(`${name}: `)) m = m.slice(name.length + 2);
  const rules = [
    [/not an image Pillow can read/, "this file is not an image (or not a format the server reads)"],
    [/damaged or truncated image.*/, "the image is damaged or cut short"],
    [/(\d[\d,x =]*) pixels? is above the limit of ([\d,]+) pixels.*/, "the image is too large ($1 pixels; the limit is $2)"],
    [/the image \(more than twice the limit\) is above the limit of ([\d,]+) pixels.*/, "the image is too large (the limit is $1 pixels)"],
    [/^upload.*above the limit of ([\d,]+) bytes.*/, "the file is too large to upload (the limit is $1 bytes)"],
    [/^Failed to fetch$|NetworkError.*/, "the server did not answer: is fsa app still running?"],
  ];
  for (const [re, say] of rules) {
    if (re.test(m)) return m.replace(re, say);
  }
  return m;
}

// ---- the request

async function postSegment(blob, name, classes, signal, requestId = "") {
  const form = new FormData();
  form.append("image", blob, name);
  form.append("classes", classes);
  if (requestId) form.append("request_id", requestId);
  if (el.probThd.value.trim() !== "") form.append("prob_thd", el.probThd.value.trim());
  const t0 = performance.now();
  const reply = await fetch("/api/segment", { method: "POST", body: form, signal });
  let body;
  try {
    body = await reply.json();
  } catch (e) {
    throw new Error(`the server answered HTTP ${reply.status} without a result`);
  }
  if (!reply.ok) throw new Error(friendly(body.error || `HTTP ${reply.status}`, name));
  const labels = await loadImage("data:image/png;base64," + body.labels);
  return { name, answer: body, labels, classes, t0, roundTripMs: performance.now() - t0 };
}

// ---- drawing: the photo (or video frame), then the label map at the opacity on screen

function maskOf(result, index) {
  // the label map with only class `index` kept (legend hover): colours are distinct, so compare them
  result.masks = result.masks || new Map();
  if (result.masks.has(index)) return result.masks.get(index);
  const { labels } = result;
  const c = document.createElement("canvas");
  c.width = labels.naturalWidth;
  c.height = labels.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(labels, 0, 0);
  const data = ctx.getImageData(0, 0, c.width, c.height);
  const entry = result.answer.summary.classes.find((k) => k.index === index);
  const rgb = entry && entry.color ? entry.color : [-1, -1, -1];
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    if (px[i] !== rgb[0] || px[i + 1] !== rgb[1] || px[i + 2] !== rgb[2]) px[i + 3] = 0;
  }
  ctx.putImageData(data, 0, 0);
  result.masks.set(index, c);
  return c;
}

function compose(base, result) {
  const canvas = el.overlay;
  const w = result.labels.naturalWidth;
  const h = result.labels.naturalHeight;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, w, h);
  const plain = el.labelmap.checked;
  if (!plain && base) ctx.drawImage(base, 0, 0, w, h);
  ctx.globalAlpha = plain ? 1 : Number(el.opacity.value);
  const layer = state.highlight === null ? result.labels : maskOf(result, state.highlight);
  ctx.drawImage(layer, 0, 0, w, h);
  ctx.globalAlpha = 1;
  canvas.hidden = false;
  el.empty.hidden = true;
}

async function draw(result) {
  if (!result.photo) result.photo = await loadImage(result.imageURL);
  compose(result.photo, result);
  if (result.shownMs === undefined) result.shownMs = performance.now() - result.t0;  // request to overlay on screen
  el.overlay.dataset.shownMs = result.shownMs.toFixed(1);
  el.overlay.dataset.serverMs = String((result.answer.summary.timings_ms || {}).total ?? "");
  el.overlay.dataset.frames = String(Number(el.overlay.dataset.frames || 0) + 1);
}

function clearResult() {
  state.current = -1;
  state.highlight = null;
  el.overlay.hidden = true;
  el.empty.hidden = false;
  el.legend.replaceChildren();
  el.timings.textContent = "";
  el.downloads.replaceChildren();
  [...el.thumbs.children].forEach((t) => t.classList.remove("current"));
}

// ---- legend, timings, downloads

function legendEntries(summary) {
  // every class of the list, 0% included, then "unlabelled" when the threshold left pixels out
  const present = new Map(summary.classes.map((c) => [c.index, c]));
  const rows = summary.vocabulary.map((name, index) => present.get(index) ||
    { index, name, fraction: 0, color: ((state.info || {}).palette || [])[index] || null });
  for (const c of summary.classes) if (c.index >= summary.vocabulary.length) rows.push(c);
  return rows;
}

function showLegend(result) {
  el.legend.replaceChildren();
  for (const c of legendEntries(result.answer.summary)) {
    const li = document.createElement("li");
    li.dataset.index = c.index;
    li.dataset.fraction = c.fraction;
    const swatch = document.createElement("span");
    swatch.className = c.color ? "swatch" : "swatch none";
    if (c.color) swatch.style.background = `rgb(${c.color.join(",")})`;
    const text = document.createElement("span");
    text.className = "name";
    text.textContent = `${c.name} ${(100 * c.fraction).toFixed(1)}%`;
    li.append(swatch, text);
    if (c.fraction === 0) li.classList.add("absent");
    if (c.color && c.fraction > 0) {
      li.addEventListener("mouseenter", () => highlight(c.index));
      li.addEventListener("mouseleave", () => highlight(null));
    }
    el.legend.append(li);
  }
}

function highlight(index) {
  state.highlight = index;
  el.overlay.dataset.highlight = index === null ? "" : String(index);
  if (state.live === null && state.current >= 0) draw(state.results[state.current]);
}

function showTimings(result) {
  const s = result.answer.summary;
  const t = s.timings_ms || {};
  const ms = (v) => (v === undefined ? "?" : `${Number(v).toFixed(0)} ms`);
  const info = state.info || {};
  el.timings.textContent =
    `server: decode ${ms(t.decode)}, text ${ms(t.text)}, preprocess ${ms(t.preprocess)}, forward ${ms(t.forward)}, ` +
    `postprocess ${ms(t.postprocess)}, encode ${ms(t.encode)} (${t.crops ?? "?"} crops); ` +
    `round trip ${ms(result.roundTripMs)}. ${s.width}x${s.height}, backend ${s.backend}, ` +
    `precision ${info.precision ?? "?"}, artefact ${String(s.artifact_sha256 || "").slice(0, 12)}`;
}

function link(text, download, make) {
  // a download made when clicked: the overlay at the opacity and highlight on screen at that moment
  const a = document.createElement("a");
  a.textContent = text;
  a.download = download;
  a.href = "#";
  a.addEventListener("click", async (e) => {
    if (a.dataset.ready) return;
    e.preventDefault();
    a.href = URL.createObjectURL(await make());
    a.dataset.ready = "1";
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.href = "#"; delete a.dataset.ready; }, 1000);
  });
  return a;
}

function showDownloads(result) {
  const name = stem(result.name);
  const a = result.answer;
  const png = () => fetch("data:image/png;base64," + a.labels).then((r) => r.blob());
  const json = async () => new Blob([JSON.stringify(a.summary, null, 2) + "\n"], { type: "application/json" });
  const overlay = () => new Promise((resolve) => el.overlay.toBlob(resolve, "image/png"));
  el.downloads.replaceChildren("Download: ", link(`${name}.png`, `${name}.png`, png), " ",
    link(`${name}_overlay.png`, `${name}_overlay.png`, overlay), " ", link(`${name}.json`, `${name}.json`, json));
}

async function show(index) {
  state.current = index;
  state.highlight = null;
  const result = state.results[index];
  [...el.thumbs.children].forEach((t) => t.classList.toggle("current", Number(t.dataset.index) === index));
  showLegend(result);
  showTimings(result);
  showDownloads(result);
  await draw(result);
  if (window.matchMedia("(max-width: 700px)").matches) el.overlay.scrollIntoView({ block: "start" });
}

// ---- photos: one request at a time; the button shows elapsed time and cancels, or restarts
// with the classes now typed (the old request is aborted: the server stops its work)

function fileKey(file) {
  return `${file.name}|${file.size}|${file.lastModified || 0}`;
}

function remember(result, file) {
  // one thumbnail per file: segmenting it again (other classes) replaces its result
  const key = fileKey(file);
  const at = state.results.findIndex((r) => r.key === key);
  result.key = key;
  result.imageURL = URL.createObjectURL(file);
  if (at >= 0) {
    URL.revokeObjectURL(state.results[at].imageURL);
    state.results[at] = result;
    const img = el.thumbs.querySelector(`img[data-index="${at}"]`);
    if (img) img.src = result.imageURL;
    return at;
  }
  state.results.push(result);
  const index = state.results.length - 1;
  const img = document.createElement("img");
  img.src = result.imageURL;
  img.alt = result.name;
  img.title = result.name;
  img.dataset.index = String(index);
  img.addEventListener("click", () => show(index));
  el.thumbs.append(img);
  return index;
}

function updateButton() {
  const run = state.run;
  el.segment.classList.toggle("busy", Boolean(run));
  if (!run) {
    el.segment.textContent = "Segment";
    return;
  }
  const secs = ((performance.now() - run.started) / 1000).toFixed(1);
  const step = describeStep(run.step);
  el.segment.textContent = el.classes.value !== run.classes ? "Segment with new classes"
    : `Cancel (${secs} s${step ? ", " + step : ""})`;
  el.segment.dataset.elapsed = secs;
  el.segment.dataset.step = step;
}

function describeStep(step) {
  // the server's GET /api/progress answer: where the request's work is
  if (!step) return "";
  if (step.stage === "text") return `text ${Math.round((100 * step.done) / Math.max(1, step.total))}%`;
  if (step.stage === "crops") return `crops ${step.done}/${step.total}`;
  return step.stage;
}

async function pollProgress(run) {
  if (!run.rid || run.polling) return;
  run.polling = true;
  try {
    const reply = await fetch(`/api/progress/${run.rid}`);
    if (reply.ok) run.step = await reply.json();
  } catch (e) { /* the answer will say */ } finally {
    run.polling = false;
  }
}

async function segmentFiles(files) {
  if (!files.length) {
    setStatus("choose, drop or paste an image first", true);
    return;
  }
  if (state.run) state.run.controller.abort();  // replaced: its server work stops at the next batch
  const run = { controller: new AbortController(), classes: el.classes.value, started: performance.now() };
  state.run = run;
  run.timer = setInterval(() => { updateButton(); pollProgress(run); }, 250);
  updateButton();
  try {
    localStorage.setItem(STORE, run.classes);
  } catch (e) { /* private mode: not remembered */ }
  try {
    for (const [i, file] of files.entries()) {
      if (state.run !== run) return;
      setStatus(`segmenting ${file.name} (${i + 1} of ${files.length})…`);
      try {
        run.rid = `r${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
        run.step = null;
        const result = await postSegment(file, file.name, run.classes, run.controller.signal, run.rid);
        if (state.run !== run) return;
        await show(remember(result, file));
        setStatus(`${file.name}: shown in ${result.shownMs.toFixed(0)} ms`);
      } catch (e) {
        if (e.name === "AbortError") {
          if (state.run === run) setStatus("cancelled");
          return;
        }
        clearResult();
        setStatus(`error: ${file.name}: ${e.message}`, true);
      } finally {
        countDone();
      }
    }
  } finally {
    clearInterval(run.timer);
    if (state.run === run) state.run = null;
    updateButton();
  }
}

function segmentClicked() {
  const run = state.run;
  if (run && el.classes.value === run.classes) {
    run.controller.abort();
    state.run = null;
    clearInterval(run.timer);
    updateButton();
    setStatus("cancelled");
    return;
  }
  segmentFiles(state.pending);
}

// ---- live camera: the video is drawn on every animation frame, the latest mask over it; one
// frame is at the server at a time; paused while the tab is hidden; Esc stops it

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function grabFrame(video) {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

function showFps(roundTripMs) {
  const now = performance.now();
  state.frames.push(now);
  state.frames = state.frames.filter((t) => now - t < 5000).slice(-20);
  const n = state.frames.length;
  const fps = n > 1 ? (1000 * (n - 1)) / (state.frames[n - 1] - state.frames[0]) : 1000 / roundTripMs;
  el.fps.textContent = `live: masks ${fps.toFixed(2)}/s (last ${roundTripMs.toFixed(0)} ms), video at its own rate`;
}

function paint(live) {
  if (state.live !== live) return;
  const video = el.video;
  if (video.videoWidth) {
    const canvas = el.overlay;
    if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
    }
    const ctx = canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.drawImage(video, 0, 0);
    if (live.mask) {
      ctx.globalAlpha = el.labelmap.checked ? 1 : Number(el.opacity.value);
      ctx.drawImage(live.mask.labels, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
    }
    canvas.hidden = false;
    el.empty.hidden = true;
    el.overlay.dataset.videoFrames = String(Number(el.overlay.dataset.videoFrames || 0) + 1);
  }
  live.raf = requestAnimationFrame(() => paint(live));
}

async function liveLoop(live) {
  const video = el.video;
  while (state.live === live && video.videoWidth === 0) await sleep(50);
  while (state.live === live) {
    if (document.hidden) {  // a background tab: no frames sent
      await sleep(250);
      continue;
    }
    const blob = await grabFrame(video);
    try {
      const result = await postSegment(blob, "camera.jpg", el.classes.value, live.controller.signal);
      if (state.live !== live) break;
      live.mask = result;
      state.current = -1;
      showLegend(result);
      showTimings(result);
      el.overlay.dataset.frames = String(Number(el.overlay.dataset.frames || 0) + 1);
      showFps(result.roundTripMs);
      setStatus("live camera");
    } catch (e) {
      if (state.live !== live) break;
      setStatus(`error: camera frame: ${e.message}`, true);
      await sleep(1000);
    }
  }
}

function cameraConstraints() {
  const v = el.cameraSelect.value;
  if (v.startsWith("facing:")) return { facingMode: v.slice(7) };
  return { deviceId: { exact: v } };
}

async function listCameras() {
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const kept = el.cameraSelect.value;
    for (const o of [...el.cameraSelect.options]) if (!o.value.startsWith("facing:")) o.remove();
    devices.filter((d) => d.kind === "videoinput" && d.deviceId).forEach((d, i) => {
      const o = document.createElement("option");
      o.value = d.deviceId;
      o.textContent = d.label || `camera ${i + 1}`;
      el.cameraSelect.append(o);
    });
    el.cameraSelect.value = kept;
  } catch (e) { /* no list: the front/back choice stays */ }
}

async function startCamera() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("error: the camera needs a secure page: open it as http://localhost:PORT, or behind HTTPS", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: cameraConstraints(), audio: false });
  } catch (e) {
    setStatus(`error: the camera could not start (${e.name === "NotAllowedError" ? "permission refused" : e.message || e.name})`, true);
    return;
  }
  el.video.srcObject = stream;
  await el.video.play();
  const live = { stream, controller: new AbortController(), mask: null };
  state.live = live;
  state.frames = [];
  el.camera.textContent = "Stop camera";
  el.camera.classList.add("on");
  setStatus("live camera: starting…");
  listCameras();
  paint(live);
  liveLoop(live);
}

function stopCamera() {
  const live = state.live;
  state.live = null;
  if (live) {
    live.controller.abort();
    cancelAnimationFrame(live.raf);
    live.stream.getTracks().forEach((t) => t.stop());
  }
  el.video.srcObject = null;
  el.camera.textContent = "Live camera";
  el.camera.classList.remove("on");
  setStatus("camera stopped");
}

// ---- wiring

el.image.addEventListener("change", () => {
  state.pending = [...el.image.files];
  if (state.pending.length) setStatus(`${state.pending.length} image(s) chosen: press Segment (Ctrl+Enter)`);
});
el.segment.addEventListener("click", segmentClicked);
el.classes.addEventListener("input", updateButton);
el.camera.addEventListener("click", () => (state.live ? stopCamera() : startCamera()));
el.cameraSelect.addEventListener("change", () => {
  if (state.live) { stopCamera(); startCamera(); }
});
for (const input of [el.opacity, el.labelmap]) {
  input.addEventListener("input", () => {
    if (state.live === null && state.current >= 0) draw(state.results[state.current]);
  });
}
el.drop.addEventListener("dragover", (e) => { e.preventDefault(); el.drop.classList.add("over"); });
el.drop.addEventListener("dragleave", () => el.drop.classList.remove("over"));
el.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  el.drop.classList.remove("over");
  state.pending = [...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || f.type === "");
  segmentFiles(state.pending);
});
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
  if (!files.length) return;  // text pasted into the classes box stays text
  e.preventDefault();
  state.pending = files.map((f, i) => (f.name && f.name !== "image.png" ? f
    : new File([f], `pasted-${Date.now()}-${i}.png`, { type: f.type, lastModified: Date.now() })));
  segmentFiles(state.pending);
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    if (state.pending.length) segmentFiles(state.pending);
  } else if (e.key === "Escape" && state.live) {
    stopCamera();
  }
});
document.addEventListener("visibilitychange", () => {
  if (state.live) setStatus(document.hidden ? "live camera: paused (tab hidden)" : "live camera");
});

async function loadSample(name) {
  setStatus(`loading ${name}…`);
  const reply = await fetch(`/samples/${encodeURIComponent(name)}`);
  if (!reply.ok) {
    setStatus(`error: example ${name} is missing (HTTP ${reply.status})`, true);
    return;
  }
  const blob = await reply.blob();
  state.pending = [new File([blob], name, { type: blob.type, lastModified: 1 })];
  await segmentFiles(state.pending);
}

function describeWeights(w) {
  if (!w) return "";
  if (w.source === "random-init") {
    return "This artefact has random weights (random-init" + (w.seed !== undefined ? `, seed ${w.seed}` : "") +
      "): its masks are noise by design, good only to try the page. Export with --pretrained for real results.";
  }
  return "";
}

async function init() {
  try {
    const reply = await fetch("/api/info");
    const info = await reply.json();
    if (!reply.ok) throw new Error(info.error || `HTTP ${reply.status}`);
    state.info = info;
    el.info.textContent = `${info.model ?? "model"} · artefact ${info.artifact} (${String(info.artifact_sha256).slice(0, 12)})` +
      ` · backend ${info.backend} · precision ${info.precision}`;
    const warn = describeWeights(info.weights);
    el.weights.textContent = warn;
    el.weights.hidden = !warn;
    let saved = null;
    try { saved = localStorage.getItem(STORE); } catch (e) { /* no storage */ }
    if (!el.classes.value) el.classes.value = saved || info.classes;
  } catch (e) {
    setStatus(`error: the server's details could not be read: ${friendly(e.message)}`, true);
  }
  try {
    const { samples } = await (await fetch("/api/samples")).json();
    if (samples.length) el.samples.append("Examples: ");
    for (const name of samples) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = stem(name);
      b.dataset.sample = name;
      b.addEventListener("click", () => loadSample(name));
      el.samples.append(b);
    }
  } catch (e) {
    /* no examples: the page works without them */
  }
}
init();
