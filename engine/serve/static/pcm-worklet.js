// Microphone capture and delayed playback, on the audio rendering thread.
//
// Input: the microphone (first channel). Every ~20 ms the processor posts one block of 16-bit PCM at
// the context's sample rate ({pcm: ArrayBuffer, frame: index of its first sample since capture began,
// time: the audio clock then, last: true for the final block once capture is switched off}).
// Output: the same input delayed by `delay` seconds (set from the page once the latency is measured),
// so the person hears their own voice in step with the face; silent while playback is off.

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const blockMs = (options.processorOptions && options.processorOptions.blockMs) || 20;
    this.blockSize = Math.max(128, Math.round(sampleRate * blockMs / 1000));
    this.block = new Int16Array(this.blockSize);
    this.filled = 0;
    this.captured = 0;
    this.ring = new Float32Array(Math.ceil(sampleRate * 10));
    this.write = 0;
    this.delaySamples = 0;
    this.playback = true;
    this.capturing = false;
    this.port.onmessage = (event) => {
      const m = event.data;
      if (m.delay !== undefined) this.delaySamples = Math.min(this.ring.length - 256, Math.round(m.delay * sampleRate));
      if (m.playback !== undefined) this.playback = m.playback;
      if (m.capturing !== undefined) {
        this.capturing = m.capturing;
        if (!m.capturing) this.flush(true);
      }
    };
  }

  flush(last = false) {
    const out = this.block.slice(0, this.filled);
    this.port.postMessage({ pcm: out.buffer, frame: this.captured - this.filled, time: currentTime, last },
      [out.buffer]);
    this.filled = 0;
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    const output = outputs[0];
    const n = output[0].length;
    for (let i = 0; i < n; i++) {
      const x = input ? input[i] : 0;
      this.ring[this.write] = x;
      let r = this.write - this.delaySamples;
      if (r < 0) r += this.ring.length;
      const y = this.playback ? this.ring[r] : 0;
      for (let c = 0; c < output.length; c++) output[c][i] = y;
      this.write = (this.write + 1) % this.ring.length;
      if (this.capturing) {
        this.block[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(x * 32768)));
        this.captured++;
        if (this.filled === this.blockSize) this.flush();
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
