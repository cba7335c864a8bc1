"""What the WebRTC path's video encode costs: CPU seconds per second of video, per codec and side.

The encoders are aiortc's own (VP8 through libvpx, H.264 through PyAV's libx264), fed what ``emote serve
--webrtc`` feeds them: RGB frames at 25 fps. The content is a fixed random image shifted one pixel a frame
(busier than a face on a still background, so an upper figure). Run ``python -m bench.webrtc_encode``;
it prints one line per codec and side. Needs the webrtc extra.
"""

from __future__ import annotations

import argparse
import fractions
import time

import av
import numpy as np

FPS = 25


def encode_cost(encoder_class: type, side: int, frames: int = 75) -> float:
    """CPU seconds (this process, all threads) to encode one second of ``side`` x ``side`` video at 25 fps."""
    encoder = encoder_class()
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    video = []
    for i in range(frames + 1):
        frame = av.VideoFrame.from_ndarray(np.roll(image, i, axis=1), format="rgb24")
        frame.pts, frame.time_base = i * 90000 // FPS, fractions.Fraction(1, 90000)
        video.append(frame)
    encoder.encode(video[0])  # the key frame and the encoder's set-up, not counted
    started = time.process_time()
    for frame in video[1:]:
        encoder.encode(frame)
    return (time.process_time() - started) / frames * FPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128, 512], help="frame sides in pixels")
    args = parser.parse_args(argv)
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    for side in args.sides:
        for name, encoder_class in (("VP8", Vp8Encoder), ("H.264", H264Encoder)):
            cost = encode_cost(encoder_class, side)
            print(f"{name:6} {side}x{side}: {cost * 1000:.0f} ms of CPU per second of video ({FPS} fps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
