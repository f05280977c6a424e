// voxtrio's browser page: the native WebSocket protocol (docs/PROTOCOL.md) played
// through Web Audio as frames arrive. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ws: null, ctx: null, request: null, sources: [], playhead: 0 };
// Read by the browser test; also handy in the console.
window.voxtrio = { frames: 0, firstAudioMs: null, status: "idle", audioSeconds: 0 };

function setStatus(text) {
  window.voxtrio.status = text;
  $("status").textContent = text;
}

function authQuery() {
  const key = $("key").value.trim();
  return key ? `?api_key=${encodeURIComponent(key)}` : "";
}

async function loadVoices() {
  const key = $("key").value.trim();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    const response = await fetch("/v1/audio/voices", { headers });
    if (!response.ok) return;
    const { voices } = await response.json();
    for (const voice of voices) {
      const option = document.createElement("option");
      option.value = option.textContent = voice;
      $("voice").append(option);
    }
  } catch (error) {
    console.warn("voices", error);
  }
}

function connect() {
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) return state.ready;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/tts${authQuery()}`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  state.ready = new Promise((resolve, reject) => {
    ws.onopen = () => { $("connection").textContent = "connected"; $("connection").className = "pill open"; resolve(); };
    ws.onerror = () => reject(new Error("WebSocket connection failed"));
  });
  ws.onclose = (event) => {
    $("connection").textContent = `disconnected (${event.code})`;
    $("connection").className = "pill";
    if (state.request) finish(`connection closed (${event.code})`);
  };
  ws.onmessage = (event) => (typeof event.data === "string" ? onMessage(JSON.parse(event.data)) : onFrame(event.data));
  return state.ready;
}

// A binary frame: AA 55, type, 0, u32 metadata length, metadata JSON, u32 payload length, payload.
function parseFrame(buffer) {
  const view = new DataView(buffer);
  if (view.getUint8(0) !== 0xaa || view.getUint8(1) !== 0x55) throw new Error("not an audio frame");
  const metaLength = view.getUint32(4);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, metaLength)));
  const payloadLength = view.getUint32(8 + metaLength);
  return { type: view.getUint8(2), meta, payload: new Uint8Array(buffer, 12 + metaLength, payloadLength) };
}

function onFrame(buffer) {
  const request = state.request;
  const { meta, payload } = parseFrame(buffer);
  if (!request || meta.request_id !== request.id) return;
  window.voxtrio.frames += 1;
  $("frames").textContent = String(window.voxtrio.frames);
  if (!payload.length) return;
  if (window.voxtrio.firstAudioMs === null) {
    window.voxtrio.firstAudioMs = performance.now() - request.sentAt;
    $("ttfa").textContent = `${window.voxtrio.firstAudioMs.toFixed(0)} ms`;
  }
  if (request.live) playPcm(request, payload, meta.sample_rate);
  else request.encoded.push(payload.slice());
}

function playPcm(request, bytes, rate) {
  // Carry a byte split across frames; a WAV stream's 44-byte header is skipped once.
  let data = request.carry.length ? concat(request.carry, bytes) : bytes;
  if (request.skip) {
    const skipped = Math.min(request.skip, data.length);
    data = data.subarray(skipped);
    request.skip -= skipped;
  }
  const whole = data.length - (data.length % 2);
  request.carry = data.slice(whole);
  if (!whole) return;
  const samples = new Int16Array(data.slice(0, whole).buffer);
  const audio = state.ctx.createBuffer(1, samples.length, rate);
  const channel = audio.getChannelData(0);
  for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
  schedule(audio);
  addReceived(samples.length / rate);
}

function schedule(audio) {
  const source = state.ctx.createBufferSource();
  source.buffer = audio;
  source.connect(state.ctx.destination);
  // Never in the past: a late frame plays as soon as it can, the next ones follow it.
  state.playhead = Math.max(state.playhead, state.ctx.currentTime + 0.05);
  source.start(state.playhead);
  state.playhead += audio.duration;
  state.sources.push(source);
  source.onended = () => { state.sources = state.sources.filter((s) => s !== source); };
}

function addReceived(seconds) {
  window.voxtrio.audioSeconds += seconds;
  $("received").textContent = `${window.voxtrio.audioSeconds.toFixed(2)} s`;
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a); out.set(b, a.length);
  return out;
}

async function onMessage(message) {
  const request = state.request;
  if (!request || message.request_id !== request.id) return;
  if (message.type === "progress") {
    $("progress").value = message.progress;
    setStatus(`${message.state}${message.message ? `: ${message.message}` : ""}`);
  } else if (message.type === "complete") {
    if (message.result.cancelled) return finish("cancelled");
    const t = message.result.timings;
    $("timings").textContent = `queue ${t.queue_ms.toFixed(0)} ms · first audio ${t.first_audio_ms?.toFixed(0)} ms · total ${t.total_ms.toFixed(0)} ms`;
    $("progress").value = 1;
    if (!request.live) await playEncoded(request, message.result.duration);
    finish(`complete: ${message.result.duration.toFixed(2)} s of ${message.result.format}`);
  } else if (message.type === "error" && message.terminal) {
    finish(`error ${message.error.code}: ${message.error.message}`);
  }
}

async function playEncoded(request, duration) {
  const whole = request.encoded.reduce((a, b) => concat(a, b), new Uint8Array());
  try {
    schedule(await state.ctx.decodeAudioData(whole.buffer));
    addReceived(duration);
  } catch (error) {
    setStatus(`this browser cannot decode ${request.format}: ${error}`);
  }
}

function finish(status) {
  state.request = null;
  if (state.feeder) clearInterval(state.feeder);
  setStatus(status);
  $("speak").disabled = $("stream").disabled = false;
  $("cancel").disabled = true;
}

function params() {
  const out = { format: $("format").value };
  if ($("rate").value) out.sample_rate = Number($("rate").value);
  if ($("voice").value) out.voice_id = $("voice").value;
  return out;
}

async function begin() {
  state.ctx = state.ctx || new AudioContext();
  await state.ctx.resume();
  for (const source of state.sources) source.stop();
  state.sources = [];
  state.playhead = 0;
  Object.assign(window.voxtrio, { frames: 0, firstAudioMs: null, audioSeconds: 0 });
  for (const [id, text] of [["ttfa", "–"], ["frames", "0"], ["received", "0.00 s"], ["timings", "–"]]) $(id).textContent = text;
  $("progress").value = 0;
  $("speak").disabled = $("stream").disabled = true;
  $("cancel").disabled = false;
  setStatus("connecting");
  await connect();
  const format = $("format").value;
  const live = format === "pcm16" || format === "wav";
  state.request = {
    id: `web-${Date.now().toString(36)}`, sentAt: performance.now(), live, format,
    carry: new Uint8Array(), skip: format === "wav" ? 44 : 0, encoded: [],
  };
  setStatus("sent");
  return state.request;
}

function send(message) { state.ws.send(JSON.stringify(message)); }

async function speak() {
  try {
    const request = await begin();
    const p = params();
    // Compressed formats are decoded whole; pcm16/wav stream.
    send({ type: "tts_request", request_id: request.id, params: { text: $("text").value, mode: "streaming", ...p } });
  } catch (error) { finish(`error: ${error.message}`); }
}

async function streamLikeAnLlm() {
  try {
    const request = await begin();
    send({ type: "text_stream_start", request_id: request.id, params: params() });
    const words = $("text").value.split(/(\s+)/);
    let next = 0;
    state.feeder = setInterval(() => {
      if (state.request !== request) return clearInterval(state.feeder);
      if (next >= words.length) {
        clearInterval(state.feeder);
        return send({ type: "text_stream_end", request_id: request.id });
      }
      send({ type: "text_delta", request_id: request.id, text: words.slice(next, next + 2).join("") });
      next += 2;
    }, 60);
  } catch (error) { finish(`error: ${error.message}`); }
}

function cancel() {
  if (!state.request) return;
  send({ type: "cancel", request_id: state.request.id });
  if (state.feeder) clearInterval(state.feeder);
  for (const source of state.sources) source.stop();
  state.sources = [];
  setStatus("cancelling");
}

$("speak").addEventListener("click", speak);
$("stream").addEventListener("click", streamLikeAnLlm);
$("cancel").addEventListener("click", cancel);
$("key").addEventListener("change", loadVoices);
loadVoices();
