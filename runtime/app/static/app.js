// fsa app: the page. Plain browser JavaScript, no build step. It talks to GET /api/info,
// GET /api/samples and POST /api/segment (multipart image, classes, optional prob_thd).
"use strict";

const $ = (id) => document.getElementById(id);
const el = {
  image: $("image"), drop: $("drop"), samples: $("samples"), classes: $("classes"), probThd: $("prob-thd"),
  segment: $("segment"), camera: $("camera"), status: $("status"), fps: $("fps"), overlay: $("overlay"),
  opacity: $("opacity"), labelmap: $("labelmap"), legend: $("legend"), timings: $("timings"),
  downloads: $("downloads"), thumbs: $("thumbs"), info: $("info"), video: $("video"),
};
const state = { info: null, pending: [], results: [], current: -1, busy: false, live: null, frames: [] };

function setStatus(text, isError = false) {
  el.status.textContent = text;
  el.status.classList.toggle("error", isError);
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

async function postSegment(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  form.append("classes", el.classes.value);
  if (el.probThd.value.trim() !== "") form.append("prob_thd", el.probThd.value.trim());
  const t0 = performance.now();
  const reply = await fetch("/api/segment", { method: "POST", body: form });
  let body;
  try {
    body = await reply.json();
  } catch (e) {
    throw new Error(`HTTP ${reply.status}: not a JSON answer`);
  }
  if (!reply.ok) throw new Error(body.error || `HTTP ${reply.status}`);
  return { name, answer: body, t0, roundTripMs: performance.now() - t0, imageURL: URL.createObjectURL(blob) };
}

// The overlay is drawn here from the original and the label PNG (a palette PNG: the browser
// shows fsa segment's colours), so that the opacity slider and the label-map toggle need no request.
async function draw(result) {
  const labels = await loadImage("data:image/png;base64," + result.answer.labels);
  const canvas = document.createElement("canvas");
  canvas.width = labels.naturalWidth;
  canvas.height = labels.naturalHeight;
  const ctx = canvas.getContext("2d");
  if (el.labelmap.checked) {
    ctx.drawImage(labels, 0, 0);
  } else {
    const photo = await loadImage(result.imageURL);
    ctx.drawImage(photo, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = Number(el.opacity.value);
    ctx.drawImage(labels, 0, 0);
  }
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const old = el.overlay.dataset.url;
  const url = URL.createObjectURL(blob);
  await new Promise((resolve) => { el.overlay.onload = resolve; el.overlay.onerror = resolve; el.overlay.src = url; });
  if (old) URL.revokeObjectURL(old);
  el.overlay.dataset.url = url;
  if (result.shownMs === undefined) result.shownMs = performance.now() - result.t0;  // request to overlay on screen
  el.overlay.dataset.shownMs = result.shownMs.toFixed(1);
  el.overlay.dataset.serverMs = String((result.answer.summary.timings_ms || {}).total ?? "");  // the segmentation's own
  el.overlay.dataset.frames = String(Number(el.overlay.dataset.frames || 0) + 1);
}

function showLegend(summary) {
  el.legend.replaceChildren();
  for (const c of summary.classes) {
    const li = document.createElement("li");
    li.dataset.index = c.index;
    li.dataset.fraction = c.fraction;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.color.join(",")})`;
    const text = document.createElement("span");
    text.className = "name";
    text.textContent = `${c.name} ${(100 * c.fraction).toFixed(1)}%`;
    li.append(swatch, text);
    el.legend.append(li);
  }
}

function showTimings(result) {
  const s = result.answer.summary;
  const t = s.timings_ms || {};
  const ms = (v) => (v === undefined ? "?" : `${Number(v).toFixed(0)} ms`);
  const info = state.info || {};
  el.timings.textContent =
    `server: preprocess ${ms(t.preprocess)}, forward ${ms(t.forward)}, postprocess ${ms(t.postprocess)}, ` +
    `total ${ms(t.total)} (${t.crops ?? "?"} crops); round trip ${ms(result.roundTripMs)}. ` +
    `${s.width}x${s.height}, backend ${s.backend}, precision ${info.precision ?? "?"}, ` +
    `artefact ${String(s.artifact_sha256 || "").slice(0, 12)}`;
}

function link(text, href, download) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  a.download = download;
  return a;
}

function showDownloads(result) {
  const name = stem(result.name);
  const a = result.answer;
  const json = new Blob([JSON.stringify(a.summary, null, 2) + "\n"], { type: "application/json" });
  if (result.jsonURL) URL.revokeObjectURL(result.jsonURL);
  result.jsonURL = URL.createObjectURL(json);
  el.downloads.replaceChildren(
    "Download: ",
    link(`${name}.png`, "data:image/png;base64," + a.labels, `${name}.png`),
    link(`${name}_overlay.png`, "data:image/png;base64," + a.overlay, `${name}_overlay.png`),
    link(`${name}.json`, result.jsonURL, `${name}.json`),
  );
}

async function show(index) {
  state.current = index;
  const result = state.results[index];
  [...el.thumbs.children].forEach((t, i) => t.classList.toggle("current", i === index));
  showLegend(result.answer.summary);
  showTimings(result);
  showDownloads(result);
  await draw(result);
}

function addThumb(result) {
  const img = document.createElement("img");
  img.src = result.imageURL;
  img.alt = result.name;
  img.title = result.name;
  const index = state.results.length - 1;
  img.addEventListener("click", () => show(index));
  el.thumbs.append(img);
}

// #status data-done: images finished (shown or failed), for scripts that wait on the page
function countDone() {
  el.status.dataset.done = String(Number(el.status.dataset.done || 0) + 1);
}

async function segmentFiles(files) {
  if (state.busy) return;
  if (!files.length) {
    setStatus("choose or drop an image first", true);
    return;
  }
  state.busy = true;
  try {
    for (const [i, file] of files.entries()) {
      setStatus(`segmenting ${file.name} (${i + 1} of ${files.length})…`);
      let result;
      try {
        result = await postSegment(file, file.name);
      } catch (e) {
        setStatus(`error: ${file.name}: ${e.message}`, true);
        countDone();
        continue;
      }
      state.results.push(result);
      addThumb(result);
      await show(state.results.length - 1);
      setStatus(`${file.name}: shown in ${result.shownMs.toFixed(0)} ms`);
      countDone();
    }
  } finally {
    state.busy = false;
  }
}

// ---- live camera: one frame in flight at most; the next is grabbed when the answer arrives
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
  el.fps.textContent = `live: ${fps.toFixed(2)} frames/s (last frame ${roundTripMs.toFixed(0)} ms)`;
}

async function liveLoop(live) {
  const video = el.video;
  while (state.live === live && video.videoWidth === 0) await sleep(50);
  let last = null;
  let drawing = Promise.resolve();  // the previous frame is drawn while the next one is at the server
  while (state.live === live) {
    const blob = await grabFrame(video);
    try {
      const result = await postSegment(blob, "camera.jpg");
      await drawing;
      if (state.live !== live) break;
      if (last) URL.revokeObjectURL(last.imageURL);
      last = result;
      state.current = -1;
      showLegend(result.answer.summary);
      showTimings(result);
      showDownloads(result);
      drawing = draw(result).then(() => {
        showFps(result.roundTripMs);
        setStatus("live camera");
      });
    } catch (e) {
      setStatus(`error: camera frame: ${e.message}`, true);
      await sleep(1000);
    }
  }
}

async function startCamera() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("error: the camera needs a secure context: open the page on localhost, or behind HTTPS", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    setStatus(`error: camera: ${e.message || e.name}`, true);
    return;
  }
  el.video.srcObject = stream;
  await el.video.play();
  const live = { stream };
  state.live = live;
  state.frames = [];
  el.camera.textContent = "Stop camera";
  el.camera.classList.add("on");
  setStatus("live camera: starting…");
  liveLoop(live);
}

function stopCamera() {
  const live = state.live;
  state.live = null;
  if (live) live.stream.getTracks().forEach((t) => t.stop());
  el.video.srcObject = null;
  el.camera.textContent = "Live camera";
  el.camera.classList.remove("on");
  setStatus("camera stopped");
}

// ---- wiring
el.image.addEventListener("change", () => {
  state.pending = [...el.image.files];
  if (state.pending.length) setStatus(`${state.pending.length} image(s) chosen: press Segment`);
});
el.segment.addEventListener("click", () => segmentFiles(state.pending));
el.camera.addEventListener("click", () => (state.live ? stopCamera() : startCamera()));
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

async function loadSample(name) {
  setStatus(`loading ${name}…`);
  const reply = await fetch(`/samples/${encodeURIComponent(name)}`);
  if (!reply.ok) {
    setStatus(`error: sample ${name}: HTTP ${reply.status}`, true);
    return;
  }
  const blob = await reply.blob();
  state.pending = [new File([blob], name, { type: blob.type })];
  await segmentFiles(state.pending);
}

async function init() {
  try {
    const info = await (await fetch("/api/info")).json();
    state.info = info;
    el.info.textContent = `${info.model ?? "model"} · artefact ${info.artifact} (${String(info.artifact_sha256).slice(0, 12)})` +
      ` · backend ${info.backend} · precision ${info.precision}`;
    if (!el.classes.value) el.classes.value = info.classes;
  } catch (e) {
    setStatus(`error: /api/info: ${e.message}`, true);
  }
  try {
    const { samples } = await (await fetch("/api/samples")).json();
    if (samples.length) el.samples.append("Examples: ");
    for (const name of samples) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = name;
      b.dataset.sample = name;
      b.addEventListener("click", () => loadSample(name));
      el.samples.append(b);
    }
  } catch (e) {
    /* no examples: the page works without them */
  }
}
init();
