// The live avatar page: microphone -> AudioWorklet (16-bit PCM at the context rate) -> WebSocket;
// JPEG frames with their presentation times <- WebSocket -> canvas, shown in step with the person's own
// voice, which is played back delayed by the measured latency. Protocol: engine/serve/protocol.py.
// Always-on, the microphone's quiet blocks are not sent: the server's clock turns that time into idle frames.
// With the WebRTC transport (RtcClient) the microphone goes out as an audio track and the face and the
// voice that drove it come back as a video and an audio track, synchronised by the browser; the figures
// are the receiver's own (getStats). Signalling: engine/serve/webrtc.py.
"use strict";

const FRAME_HEADER_BYTES = 16;
const BLOCK_MS = 20;
const FPS_WINDOW_MS = 2000;
const DELAY_WINDOW = 50;
// Always-on: a microphone block quieter than GATE_PEAK (int16 peak, about -50 dBFS) is not sent once
// GATE_HOLD_MS have passed since the last louder one; the server's clock fills that time with idle motion.
const GATE_PEAK = 100;
const GATE_HOLD_MS = 200;
const FRAME_LOG = 250;
const CLOSE_REASONS = {
  1001: "the server is shutting down",
  1006: "the connection dropped",
  1009: "a message was larger than the server accepts",
  1011: "the server failed",
};

const $ = (id) => document.getElementById(id);

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "-" : `${Math.round(seconds * 1000)} ms`;
}

// Audio-to-frame measures as this page sees them: from the moment the page sent the block that
// completed a frame's audio to the moment the frame arrived (engine + network + encoding).
class Figures {
  constructor(rate, fps) {
    this.rate = rate;
    this.fps = fps;
    this.sendEnds = [];
    this.sendTimes = [];
    this.sent = 0;
    this.firstSend = null;
    this.firstFrame = null;
    this.sentAtFirstFrame = null;
    this.latencies = [];
    this.arrivals = [];
    this.made = 0;
    this.lastMade = null;
    this.frames = 0;
    this.skipped = 0;
    this.idle = 0;
    this.speechSent = 0;
    this.framesBeforeSpeech = 0;
    this.idleBeforeSpeech = 0;
    this.log = [];
  }

  // A block of `samples` left as speech (always-on sessions withhold the quiet ones).
  speechOut(samples) { this.speechSent += samples; }

  audioSent(samples, now) {
    if (this.firstSend === null) this.firstSend = now;
    this.sent += samples;
    this.sendEnds.push(this.sent);
    this.sendTimes.push(now);
  }

  sentTimeOf(sample) {
    let lo = 0;
    let hi = this.sendEnds.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.sendEnds[mid] >= sample) hi = mid; else lo = mid + 1;
    }
    return lo < this.sendEnds.length ? this.sendTimes[lo] : null;
  }

  // The last FRAME_LOG frames as [index, pts, idle], in arrival order.
  frameIn(index, pts, skipped, idle, now) {
    if (idle) this.idle += 1;
    if (this.speechSent === 0) {
      this.framesBeforeSpeech += 1;
      if (idle) this.idleBeforeSpeech += 1;
    }
    this.log.push([index, pts, idle]);
    if (this.log.length > FRAME_LOG) this.log.shift();
    if (this.firstFrame === null) {
      this.firstFrame = now;
      this.sentAtFirstFrame = this.sent / this.rate;
    }
    this.frames += 1;
    if (skipped) {
      this.skipped += 1;
    } else {
      this.made += 1;
      this.lastMade = now;
      this.arrivals.push(now);
    }
    const sentAt = this.sentTimeOf(Math.ceil((index + 1) * this.rate / this.fps));
    if (sentAt !== null) this.latencies.push((now - sentAt) / 1000);
  }

  get ttff() { return this.firstFrame === null ? null : (this.firstFrame - this.firstSend) / 1000; }

  // Generated (not skipped) frames per second: over the last two seconds while live, over the whole
  // utterance once it is over.
  framesPerSecond(now, over) {
    if (this.firstFrame === null || this.made < 2) return null;
    if (over) return (this.made - 1) / ((this.lastMade - this.firstFrame) / 1000);
    while (this.arrivals.length && this.arrivals[0] < now - FPS_WINDOW_MS) this.arrivals.shift();
    const span = Math.min(FPS_WINDOW_MS, now - this.firstFrame) / 1000;
    return span > 0 ? this.arrivals.length / span : null;
  }

  recentP95() { return percentile(this.latencies.slice(-DELAY_WINDOW), 0.95); }
}

class LiveClient {
  constructor() {
    this.ws = null;
    this.ctx = null;
    this.node = null;
    this.stream = null;
    this.figures = null;
    this.ready = null;
    this.finished = false;
    this.failed = false;
    this.queue = [];
    this.delay = null;
    this.captureStart = null;
    this.lastDelayUpdate = 0;
    this.canvas = $("video");
    this.draw = this.canvas.getContext("2d");
    this.serverStats = null;
    this.shown = 0;
    this.gateOpenUntil = -Infinity;
    this.withheld = 0;
  }

  status(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", error);
  }

  async start() {
    this.ctx = new AudioContext();
    $("start").disabled = true;
    this.finished = false;
    this.failed = false;
    this.status("Asking for the microphone...");
    try {
      const uploading = document.querySelector("input[name=portrait]:checked").value === "upload";
      const file = $("portrait-file").files[0];
      if (uploading && !file) throw new Error("choose a photo first, or pick the sample");
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
      await this.ctx.audioWorklet.addModule("/pcm-worklet.js");
      this.ctx.resume();
      const portrait = uploading ? await file.arrayBuffer() : null;
      this.status(uploading ? "Uploading the portrait..." : "Connecting...");
      await this.connect(portrait);
    } catch (err) {
      this.fail(err.message || String(err));
    }
  }

  connect(portrait) {
    return new Promise((resolve, reject) => {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const ws = new WebSocket(`${scheme}://${location.host}/session`);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        ws.send(JSON.stringify({
          type: "start", token: $("token").value, portrait: portrait ? "upload" : "sample",
          portrait_bytes: portrait ? portrait.byteLength : 0, sample_rate: this.ctx.sampleRate,
          frames: "jpeg", jpeg_quality: 85, always_on: $("always-on").checked,
        }));
        if (portrait) ws.send(portrait);
        this.status("Preparing the portrait (reference features)...");
        resolve();
      };
      ws.onmessage = (event) => this.onMessage(event.data);
      ws.onerror = () => reject(new Error("cannot reach the server"));
      ws.onclose = (event) => this.onClose(event);
    });
  }

  onMessage(data) {
    if (typeof data !== "string") {
      this.onFrame(data);
      return;
    }
    const m = JSON.parse(data);
    if (m.type === "ready") this.onReady(m);
    else if (m.type === "stats") this.serverStats = m.stats;
    else if (m.type === "done") this.onDone(m.stats);
    else if (m.type === "interrupted") this.onInterrupted(m);
    else if (m.type === "error") this.fail(`${m.message} (${m.code})`);
  }

  onReady(ready) {
    this.ready = ready;
    this.figures = new Figures(this.ctx.sampleRate, ready.fps);
    this.node = new AudioWorkletNode(this.ctx, "pcm-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { blockMs: BLOCK_MS },
    });
    this.node.port.postMessage({ playback: false, capturing: true });
    this.node.port.onmessage = (event) => this.onAudio(event.data);
    this.ctx.createMediaStreamSource(this.stream).connect(this.node);
    this.node.connect(this.ctx.destination);
    $("stop").disabled = false;
    $("interrupt").disabled = !ready.always_on;
    const face = ready.face_detected ? "" : " No face was found: a centred crop is used.";
    const weights = ready.untrained ? ` Model '${ready.model}' has random weights: the video is not a face yet.` : "";
    this.status(`Live: talk now. ${ready.steps} step(s) per clip, ${ready.policy} policy.${face}${weights}`);
    requestAnimationFrame(() => this.render());
    setTimeout(() => {
      if (this.ctx && this.ctx.state === "suspended" && !this.failed) {
        this.status("The browser's audio system has not started (is there an audio output device?).", true);
      }
    }, 3000);
  }

  onAudio(block) {
    if (this.captureStart === null) this.captureStart = block.time - (block.pcm.byteLength / 2) / this.ctx.sampleRate;
    if (this.ws.readyState !== WebSocket.OPEN) return;
    if (block.pcm.byteLength) {
      const now = performance.now();
      this.figures.audioSent(block.pcm.byteLength / 2, now);
      if (this.gated(new Int16Array(block.pcm), now)) {
        this.withheld += 1;
      } else {
        this.withheld = 0;
        this.ws.send(block.pcm);
        this.figures.speechOut(block.pcm.byteLength / 2);
      }
    }
    if (block.last) this.ws.send(JSON.stringify({ type: "end" }));
  }

  // Always-on only: whether a block is withheld as silence (quiet, and the hold after speech is over).
  gated(pcm, now) {
    if (!this.ready.always_on) return false;
    let peak = 0;
    for (let i = 0; i < pcm.length; i++) peak = Math.max(peak, Math.abs(pcm[i]));
    if (peak >= GATE_PEAK) this.gateOpenUntil = now + GATE_HOLD_MS;
    return now >= this.gateOpenUntil;
  }

  async onFrame(buffer) {
    const view = new DataView(buffer);
    const index = view.getUint32(0, true);
    const pts = view.getFloat64(4, true);
    const flags = view.getUint8(15);
    this.figures.frameIn(index, pts, (flags & 1) === 1, (flags & 2) === 2, performance.now());
    if (this.delay === null && this.figures.latencies.length) this.updateDelay(true);
    const bitmap = await createImageBitmap(new Blob([buffer.slice(FRAME_HEADER_BYTES)], { type: "image/jpeg" }));
    let at = this.queue.length;
    while (at > 0 && this.queue[at - 1].index > index) at -= 1;
    this.queue.splice(at, 0, { index, pts, bitmap });
    this.showFigures();
  }

  // Frames are shown when the delayed playback reaches their time, so lips and voice match.
  updateDelay(first) {
    const p95 = this.figures.recentP95();
    if (p95 === null) return;
    const target = Math.ceil((p95 + 1 / this.ready.fps + BLOCK_MS / 1000) * 20) / 20;
    if (first || target > this.delay || target < this.delay - 0.1) {
      this.delay = target;
      this.node.port.postMessage({ delay: target, playback: $("playback").checked });
    }
  }

  render() {
    if (!this.ctx || this.ctx.state === "closed") return;
    const now = performance.now();
    if (this.delay !== null && now - this.lastDelayUpdate > 1000) {
      this.lastDelayUpdate = now;
      this.updateDelay(false);
    }
    const playhead = this.delay === null || this.captureStart === null
      ? Infinity : this.ctx.currentTime - this.captureStart - this.delay;
    let shown = null;
    while (this.queue.length && (this.finished || this.queue[0].pts <= playhead)) {
      if (shown) shown.bitmap.close();
      shown = this.queue.shift();
    }
    if (shown) {
      this.draw.drawImage(shown.bitmap, 0, 0, this.canvas.width, this.canvas.height);
      shown.bitmap.close();
      this.shown += 1;
    }
    this.showFigures();
    requestAnimationFrame(() => this.render());
  }

  showFigures() {
    const f = this.figures;
    if (!f) return;
    $("fig-ttff").textContent = ms(f.ttff);
    $("fig-p50").textContent = ms(percentile(f.latencies, 0.5));
    $("fig-p95").textContent = ms(percentile(f.latencies, 0.95));
    const fps = f.framesPerSecond(performance.now(), this.finished);
    $("fig-fps").textContent = fps === null ? "-" : fps.toFixed(1);
    $("fig-skipped").textContent = String(f.skipped);
    $("fig-frames").textContent = String(f.frames);
    $("fig-delay").textContent = ms(this.delay);
    $("fig-idle").textContent = String(f.idle);
    const s = this.serverStats;
    if (s) {
      $("server-line").textContent = `engine: first frame ${ms(s.time_to_first_frame_s)}, latency p50 `
        + `${ms(s.latency_p50_s)} / p95 ${ms(s.latency_p95_s)}, ${s.sessions} session(s) on the server`;
    }
  }

  interrupt() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "interrupt" }));
  }

  onInterrupted(m) {
    this.interrupted = m;
    this.status(`Interrupted: ${m.speech_s.toFixed(2)} s of speech dropped; idle from frame ${m.frame}.`);
  }

  stop() {
    $("stop").disabled = true;
    $("interrupt").disabled = true;
    if (this.node) {
      this.status("Finishing the last frames...");
      this.node.port.postMessage({ capturing: false });
    } else {
      this.teardown();
    }
  }

  onDone(stats) {
    this.finished = true;
    this.serverStats = { ...stats, latency_p50_s: stats.latency_s.median, latency_p95_s: stats.latency_s.p95,
      sessions: this.serverStats ? this.serverStats.sessions : 1 };
    this.showFigures();
    const weights = this.ready.untrained ? ` (model '${this.ready.model}': random weights, not a face yet)` : "";
    this.status(`Finished: ${this.figures.frames} frames for ${stats.audio_in_s.toFixed(1)} s of audio${weights}.`);
    this.teardown();
  }

  fail(message) {
    this.failed = true;
    this.status(`Error: ${message}`, true);
    this.teardown();
  }

  onClose(event) {
    if (!this.finished && !this.failed) {
      const reason = event.reason || CLOSE_REASONS[event.code] || `closed with code ${event.code}`;
      this.fail(`the session ended: ${reason}`);
    }
  }

  teardown() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "done");
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    this.stream = null;
    this.node = null;
    $("start").disabled = false;
    $("stop").disabled = true;
    $("interrupt").disabled = true;
  }

  state() {
    const f = this.figures;
    const now = performance.now();
    return {
      finished: this.finished, failed: this.failed, status: $("status").textContent,
      ready: this.ready, frames: f ? f.frames : 0, skipped: f ? f.skipped : 0, shown: this.shown,
      audioSentS: f ? f.sent / f.rate : 0, audioSentAtFirstFrameS: f ? f.sentAtFirstFrame : null,
      ttffS: f ? f.ttff : null, latencyP50S: f ? percentile(f.latencies, 0.5) : null,
      latencyP95S: f ? percentile(f.latencies, 0.95) : null,
      fps: f ? f.framesPerSecond(now, this.finished) : null, delayS: this.delay,
      idle: f ? f.idle : 0, interrupted: this.interrupted || null,
      speechSentS: f ? f.speechSent / f.rate : 0, withheldBlocks: this.withheld,
      framesBeforeSpeech: f ? f.framesBeforeSpeech : 0, idleBeforeSpeech: f ? f.idleBeforeSpeech : 0,
      recentFrames: f ? f.log : [],
    };
  }
}

// WebRTC: the microphone as a track out; the avatar's video and voice as tracks in; interrupt and the
// server's messages over the "control" data channel; the figures from the receiver's getStats().
class RtcClient {
  constructor() {
    this.pc = null;
    this.stream = null;
    this.control = null;
    this.ready = null;
    this.serverStats = null;
    this.interrupted = null;
    this.failed = false;
    this.finished = false;
    this.rtc = null;
    this.timer = null;
    this.video = $("remote");
  }

  status(text, error = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", error);
  }

  async start() {
    $("start").disabled = true;
    this.status("Asking for the microphone...");
    try {
      const uploading = document.querySelector("input[name=portrait]:checked").value === "upload";
      const file = $("portrait-file").files[0];
      if (uploading && !file) throw new Error("choose a photo first, or pick the sample");
      const portrait = uploading ? await base64Of(file) : undefined;
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
      const pc = new RTCPeerConnection();
      this.pc = pc;
      this.stream.getAudioTracks().forEach((track) => pc.addTrack(track, this.stream));
      pc.addTransceiver("video", { direction: "recvonly" });
      const incoming = new MediaStream();
      pc.ontrack = (event) => {
        incoming.addTrack(event.track);
        this.video.srcObject = incoming;
      };
      this.control = pc.createDataChannel("control");
      this.control.onmessage = (event) => this.onMessage(JSON.parse(event.data));
      pc.onconnectionstatechange = () => {
        if (["failed", "closed"].includes(pc.connectionState) && !this.finished) {
          this.fail(`the connection ${pc.connectionState}`);
        }
      };
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") resolve();
        else pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      });
      this.status("Connecting (WebRTC)...");
      const response = await fetch("/webrtc/offer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("token").value, type: "offer", sdp: pc.localDescription.sdp, portrait }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        throw new Error(response.status === 404 ? "this server was started without --webrtc"
          : `${body.message || response.statusText} (${body.error || response.status})`);
      }
      await pc.setRemoteDescription(body);
      $("video").hidden = true;
      this.video.hidden = false;
      $("rtc-figures").hidden = false;
      $("stop").disabled = false;
      this.timer = setInterval(() => this.poll(), 500);
    } catch (err) {
      this.fail(err.message || String(err));
    }
  }

  onMessage(m) {
    if (m.type === "ready") {
      this.ready = m;
      $("interrupt").disabled = false;
      const face = m.face_detected ? "" : " No face was found: a centred crop is used.";
      const weights = m.untrained ? ` Model '${m.model}' has random weights: the video is not a face yet.` : "";
      this.status(`Live over WebRTC: talk now. ${m.steps} step(s) per clip, ${m.idle_steps} when idle.${face}${weights}`);
    } else if (m.type === "stats") {
      this.serverStats = m.stats;
    } else if (m.type === "interrupted") {
      this.interrupted = m;
      this.status(`Interrupted: ${m.speech_s.toFixed(2)} s of speech dropped; idle from frame ${m.frame}.`);
    } else if (m.type === "error") {
      this.status(`Error: ${m.message} (${m.code})`, true);
    }
  }

  // The receiver's figures: frames decoded, mean jitter-buffer delay per track, and the estimated playout
  // times of the two tracks (on the sender's clock, so their difference is the audio/video offset).
  async poll() {
    if (!this.pc) return;
    const found = { video: null, audio: null, codecs: {} };
    (await this.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && (r.kind === "video" || r.kind === "audio")) found[r.kind] = r;
      if (r.type === "codec") found.codecs[r.id] = r.mimeType;
    });
    const v = found.video;
    const a = found.audio;
    const jitter = (r) => (r && r.jitterBufferEmittedCount ? r.jitterBufferDelay / r.jitterBufferEmittedCount : null);
    this.rtc = {
      framesDecoded: v ? v.framesDecoded || 0 : 0, framesReceived: v ? v.framesReceived || 0 : 0,
      framesDropped: v ? v.framesDropped || 0 : 0, frameWidth: v ? v.frameWidth || null : null,
      videoJitterBufferS: jitter(v), audioJitterBufferS: jitter(a),
      videoPlayoutMs: v && v.estimatedPlayoutTimestamp ? v.estimatedPlayoutTimestamp : null,
      audioPlayoutMs: a && a.estimatedPlayoutTimestamp ? a.estimatedPlayoutTimestamp : null,
      audioSamplesReceived: a ? a.totalSamplesReceived || 0 : 0,
      videoCodec: v && v.codecId ? found.codecs[v.codecId] : null,
      serverStats: this.serverStats,
    };
    const r = this.rtc;
    $("fig-decoded").textContent = String(r.framesDecoded);
    $("fig-jitter").textContent = `${ms(r.videoJitterBufferS)} / ${ms(r.audioJitterBufferS)}`;
    $("fig-sync").textContent = r.videoPlayoutMs !== null && r.audioPlayoutMs !== null
      ? `${Math.round(r.audioPlayoutMs - r.videoPlayoutMs)} ms` : "-";
    $("fig-codec").textContent = r.videoCodec || "-";
    $("fig-frames").textContent = String(r.framesReceived);
    const s = this.serverStats;
    if (s) {
      $("fig-fps").textContent = s.sustained_fps === null ? "-" : s.sustained_fps.toFixed(1);
      $("fig-skipped").textContent = String(s.frames_skipped);
      $("fig-idle").textContent = String(s.frames_idle);
      $("server-line").textContent = `engine: ${s.frames_out} frames out (${s.frames_idle} idle), `
        + `${s.microphone_s.toFixed(1)} s of microphone in, ${s.sessions} session(s) on the server`;
    }
  }

  interrupt() {
    if (this.control && this.control.readyState === "open") this.control.send(JSON.stringify({ type: "interrupt" }));
  }

  stop() {
    this.finished = true;
    this.status("Stopped.");
    this.teardown();
  }

  fail(message) {
    this.failed = true;
    this.status(`Error: ${message}`, true);
    this.teardown();
  }

  teardown() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.pc) this.pc.close();
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.pc = null;
    this.stream = null;
    $("start").disabled = false;
    $("stop").disabled = true;
    $("interrupt").disabled = true;
  }

  state() {
    return {
      transport: "webrtc", finished: this.finished, failed: this.failed, status: $("status").textContent,
      ready: this.ready, interrupted: this.interrupted, rtc: this.rtc,
      videoTime: this.video.currentTime, videoWidth: this.video.videoWidth,
    };
  }
}

// A file's bytes in base64 (the portrait travels inside the WebRTC offer's JSON).
function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(new Error("cannot read the photo"));
    reader.readAsDataURL(file);
  });
}

let client = null;

function setUp() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) $("token").value = token;
  $("portrait-file").addEventListener("change", () => {
    const file = $("portrait-file").files[0];
    if (!file) return;
    document.querySelector("input[name=portrait][value=upload]").checked = true;
    $("portrait-preview").src = URL.createObjectURL(file);
  });
  document.querySelector("input[name=portrait][value=sample]").addEventListener("change", () => {
    $("portrait-preview").src = "/sample.png";
  });
  $("playback").addEventListener("change", () => {
    if (client && client.node && client.delay !== null) {
      client.node.port.postMessage({ playback: $("playback").checked });
    }
  });
  $("start").addEventListener("click", () => {
    const webrtc = $("transport").value === "webrtc";
    $("video").hidden = false;
    $("remote").hidden = true;
    $("rtc-figures").hidden = true;
    client = webrtc ? new RtcClient() : new LiveClient();
    client.start();
  });
  $("stop").addEventListener("click", () => client && client.stop());
  $("interrupt").addEventListener("click", () => client && client.interrupt());
  window.emote = { state: () => (client ? client.state() : null) };
}

setUp();
