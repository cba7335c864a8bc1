"""Regenerate the demo inputs in ``engine/assets/demo/``: ``portrait.png`` and ``speech.wav``.

Both are made here, from nothing but code, so the demo carries no third-party images or recordings:

- ``portrait.png`` (512 x 512 RGB) is a frontal cartoon face drawn with Pillow: a skin-coloured head
  ellipse with ears, short hair, eyebrows, eyes with irises, pupils and highlights, a nose, lips, neck
  and shirt on a plain blue-grey background, with soft eye-socket, cheek and chin shading blended in
  numpy; it is drawn at twice the size, downsampled and blurred slightly, which is what lets OpenCV's
  Haar frontal-face cascade find it (``engine.faces.detect_face``).
- ``speech.wav`` (16 kHz mono 16-bit PCM, about 3 s) is espeak-ng's voice ``en-us`` reading
  ``SPEECH_TEXT`` (espeak-ng writes 22.05 kHz), resampled with PyAV (``engine.media.load_audio``).

Drawing, speech synthesis and resampling are deterministic, so running ``python -m
engine.assets.make_demo_assets`` again rewrites identical files. It needs espeak-ng on the PATH
(``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine.faces import detect_face
from engine.media import audio_duration, load_audio
from engine.timebase import SAMPLE_RATE

DEMO_DIR = Path(__file__).resolve().parent / "demo"
SPEECH_TEXT = "Hi! I am a talking portrait, made with code."
SPEECH_VOICE = "en-us"
SPEECH_WORDS_PER_MINUTE = 180

BACKGROUND = (196, 208, 222)
SKIN = (228, 184, 152)
SKIN_SHADED = (200, 152, 122)
HAIR = (58, 40, 30)
SHIRT = (52, 84, 128)
EYE_X = (0.415, 0.585)


def draw_portrait(size: int = 512, supersample: int = 2, blur: float = 2.5) -> np.ndarray:
    """Draw the demo face. Returns uint8 [size, size, 3] RGB; ``blur`` is a Gaussian radius in output pixels."""
    side = size * supersample

    def px(*fractions: float) -> list[int]:
        return [int(round(f * side)) for f in fractions]

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(x * side)), int(round(y * side))

    canvas = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse(px(0.10, 0.78, 0.90, 1.40), fill=SHIRT)
    draw.polygon([pt(0.42, 0.80), pt(0.50, 0.90), pt(0.58, 0.80)], fill=SKIN_SHADED)
    draw.rectangle(px(0.42, 0.62, 0.58, 0.81), fill=SKIN_SHADED)
    draw.ellipse(px(0.26, 0.12, 0.74, 0.60), fill=HAIR)
    draw.ellipse(px(0.275, 0.38, 0.33, 0.50), fill=SKIN_SHADED)
    draw.ellipse(px(0.67, 0.38, 0.725, 0.50), fill=SKIN_SHADED)
    draw.ellipse(px(0.30, 0.20, 0.70, 0.72), fill=SKIN)
    draw.chord(px(0.29, 0.13, 0.71, 0.42), 180, 360, fill=HAIR)

    pixels = np.asarray(canvas).astype(np.float32)
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side
    face = (((xx - 0.5) / 0.2) ** 2 + ((yy - 0.46) / 0.26) ** 2) < 1
    neck = (xx > 0.41) & (xx < 0.59) & (yy > 0.6) & (yy < 0.82) & ~face

    def shade(cx: float, cy: float, rx: float, ry: float, amount: float, colour: tuple[int, int, int],
              where: np.ndarray) -> None:
        weight = (amount * np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)) * where)[..., None]
        pixels[...] = pixels * (1 - weight) + np.asarray(colour, np.float32) * weight

    for cx in EYE_X:
        shade(cx, 0.445, 0.055, 0.035, 0.35, (150, 100, 80), face)
        shade(cx, 0.56, 0.045, 0.03, 0.25, (236, 150, 140), face)
    shade(0.5, 0.62, 0.12, 0.05, 0.45, (120, 80, 60), neck)

    canvas = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    line = max(1, int(0.004 * side))
    for cx in EYE_X:
        draw.line([pt(cx - 0.05, 0.405), pt(cx, 0.392), pt(cx + 0.05, 0.402)], fill=(60, 40, 30),
                  width=int(0.016 * side), joint="curve")
        draw.ellipse(px(cx - 0.045, 0.432, cx + 0.045, 0.468), fill=(245, 245, 240), outline=(70, 50, 40), width=line)
        draw.ellipse(px(cx - 0.019, 0.431, cx + 0.019, 0.469), fill=(92, 62, 40))
        draw.ellipse(px(cx - 0.009, 0.441, cx + 0.009, 0.459), fill=(15, 10, 10))
        draw.ellipse(px(cx + 0.002, 0.440, cx + 0.010, 0.448), fill=(255, 255, 255))
    draw.line([pt(0.492, 0.47), pt(0.480, 0.555), pt(0.492, 0.572)], fill=(196, 142, 114), width=int(1.5 * line))
    draw.ellipse(px(0.465, 0.565, 0.485, 0.580), fill=(150, 100, 80))
    draw.ellipse(px(0.515, 0.565, 0.535, 0.580), fill=(150, 100, 80))
    draw.chord(px(0.43, 0.60, 0.57, 0.665), 0, 180, fill=(180, 80, 80))
    draw.chord(px(0.44, 0.615, 0.56, 0.65), 180, 360, fill=(196, 96, 92))
    draw.line([pt(0.43, 0.632), pt(0.57, 0.632)], fill=(120, 50, 50), width=int(1.5 * line))

    image = canvas.resize((size, size), Image.LANCZOS)
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image)


def synthesize_speech(text: str = SPEECH_TEXT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with espeak-ng. Returns float32 [samples] mono in [-1, 1] at ``sample_rate`` Hz."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech_22k.wav"
        subprocess.run([espeak, "-v", SPEECH_VOICE, "-s", str(SPEECH_WORDS_PER_MINUTE), "-w", str(raw), text],
                       check=True, capture_output=True)
        return load_audio(raw, sample_rate)


def write_wav16(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write float32 [samples] mono in [-1, 1] as 16-bit PCM WAV."""
    ints = np.clip(np.round(pcm * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(ints.tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the demo portrait and speech.")
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help=f"output folder (default: {DEMO_DIR})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    portrait = draw_portrait()
    Image.fromarray(portrait).save(args.out / "portrait.png", optimize=True)
    box = detect_face(portrait)
    found = f"face detected at {tuple(round(v) for v in box.as_tuple())}" if box else "no face detected"
    print(f"{args.out / 'portrait.png'}: {portrait.shape[1]}x{portrait.shape[0]}, {found}")

    speech = synthesize_speech()
    write_wav16(args.out / "speech.wav", speech, SAMPLE_RATE)
    print(f"{args.out / 'speech.wav'}: {audio_duration(speech, SAMPLE_RATE):.2f} s at {SAMPLE_RATE} Hz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
