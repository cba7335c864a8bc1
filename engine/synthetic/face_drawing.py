"""Procedural cartoon portraits: identities, and an anti-aliased renderer of one frame.

Every shape is an implicit function (a signed distance in image units, negative inside) evaluated at
the pixel centres, and its coverage ``clip(0.5 - distance * size, 0, 1)`` blends its colour in, so a
frame renders at any size with smooth edges and no supersampling. Coordinates are fractions of the
image side: ``x`` to the right, ``y`` down, the square crop ``engine.faces.prepare_portrait`` makes
(the face box about half the side, centred), with the layout of the shipped demo portrait
(``engine.assets.make_demo_assets``) as the middle of the identity distribution.

Per frame the pose moves: head roll about the top of the neck (the head, hair and ears turn; neck and
shirt stay), mouth opening and width, and the eyelids (blinks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.synthetic.textures import Color, Texture, hsv

HAIR_STYLES = ("short", "long", "buzz", "bangs", "curly")

_SKIN_TONES: tuple[Color, ...] = ((245, 212, 190), (236, 190, 160), (228, 184, 152), (205, 150, 112),
                                  (176, 120, 86), (140, 94, 64), (112, 74, 52))
_HAIR_COLORS: tuple[Color, ...] = ((30, 24, 22), (58, 40, 30), (96, 64, 40), (150, 104, 60), (200, 160, 96),
                                   (168, 70, 40), (150, 150, 150), (226, 214, 180))
_EYE_COLORS: tuple[Color, ...] = ((92, 62, 40), (60, 40, 28), (70, 110, 150), (80, 120, 80), (110, 100, 70))
CAVITY: Color = (42, 14, 20)
TEETH: Color = (236, 234, 224)
EYE_WHITE: Color = (245, 245, 240)
LASH: Color = (50, 35, 30)
MAX_GAP = 0.1
"""Height of the open mouth's cavity at opening 1, as a fraction of the image side."""


@dataclass(frozen=True)
class Identity:
    """The look of one synthetic person (colours 0-255 RGB; lengths in fractions of the image side).

    ``cx, cy``: centre of the face ellipse; ``rx, ry``: its radii. Features are placed relative to
    them: eyes at ``cy + eye_y * ry`` and ``cx -+ eye_dx * rx``, mouth at ``cy + mouth_y * ry`` with
    half-width ``mouth_w * rx`` at rest. ``texture``: patterns and light over the flat colours (None: flat).
    """

    background: Color = (196, 208, 222)
    background_bottom: Color = (196, 208, 222)
    skin: Color = (228, 184, 152)
    hair: Color = (58, 40, 30)
    hair_style: str = "short"
    shirt: Color = (52, 84, 128)
    iris: Color = (92, 62, 40)
    lips: Color = (186, 86, 86)
    cx: float = 0.5
    cy: float = 0.465
    rx: float = 0.209
    ry: float = 0.272
    eye_dx: float = 0.425
    eye_y: float = -0.05
    eye_rx: float = 0.047
    eye_ry: float = 0.019
    brow_y: float = -0.23
    brow_tilt: float = 0.0
    mouth_y: float = 0.63
    mouth_w: float = 0.34
    nose_len: float = 0.42
    hair_volume: float = 1.0
    texture: Texture | None = None

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        """A random identity around the demo portrait's layout (deterministic in ``rng``'s state)."""

        def pick(options: tuple[Color, ...], jitter: float) -> Color:
            base = np.asarray(options[rng.integers(len(options))], dtype=np.float64)
            return tuple(np.clip(base + rng.normal(0, jitter, 3), 0, 255).tolist())

        skin_a, skin_b = rng.integers(len(_SKIN_TONES), size=2)
        mix = rng.uniform()
        skin = np.asarray(_SKIN_TONES[skin_a]) * mix + np.asarray(_SKIN_TONES[skin_b]) * (1 - mix)
        skin = tuple(np.clip(skin + rng.normal(0, 6, 3), 0, 255).tolist())
        hue = rng.uniform(0, 1)
        background = hsv(hue, rng.uniform(0.08, 0.35), rng.uniform(0.62, 0.92))
        bottom = tuple(np.clip(np.asarray(background) * rng.uniform(0.8, 1.05), 0, 255).tolist())
        shirt = hsv(rng.uniform(0, 1), rng.uniform(0.25, 0.7), rng.uniform(0.25, 0.8))
        lip_base = np.asarray(skin) * np.array([0.85, 0.48, 0.5]) + np.array([30, 6, 10])
        lips = tuple(np.clip(lip_base + rng.normal(0, 8, 3), 70, 235).tolist())
        scale = rng.uniform(0.9, 1.1)
        return cls(
            background=background, background_bottom=bottom, skin=skin, hair=pick(_HAIR_COLORS, 10),
            hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))], shirt=shirt, iris=pick(_EYE_COLORS, 8),
            lips=lips, cx=0.5 + rng.uniform(-0.025, 0.025), cy=0.465 + rng.uniform(-0.025, 0.025),
            rx=0.209 * scale * rng.uniform(0.92, 1.08), ry=0.272 * scale * rng.uniform(0.94, 1.06),
            eye_dx=rng.uniform(0.38, 0.46), eye_y=rng.uniform(-0.1, 0.0), eye_rx=0.047 * rng.uniform(0.85, 1.15),
            eye_ry=0.019 * rng.uniform(0.8, 1.25), brow_y=rng.uniform(-0.27, -0.2), brow_tilt=rng.uniform(-0.3, 0.3),
            mouth_y=rng.uniform(0.58, 0.66), mouth_w=rng.uniform(0.3, 0.38), nose_len=rng.uniform(0.36, 0.46),
            hair_volume=rng.uniform(0.9, 1.15))

    @property
    def mouth_center(self) -> tuple[float, float]:
        """Mouth centre (x, y) at rest, head upright."""
        return self.cx, self.cy + self.mouth_y * self.ry

    @property
    def pivot(self) -> tuple[float, float]:
        """The point the head rolls about (top of the neck, under the chin)."""
        return self.cx, self.cy + 0.92 * self.ry

    def mouth_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` (fractions of the side): where the mouth can be with the head upright,
        lips and the widest opening included."""
        mx, my = self.mouth_center
        half = 1.25 * self.mouth_w * self.rx
        return mx - half, my - 0.045, mx + half, my + 0.8 * MAX_GAP + 0.045

    def face_box(self, roll: float = 0.0) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the box a frontal-face detector reports (ear to ear, brows to chin; on the
        demo portrait this is OpenCV's box through ``prepare_portrait``), around the head rolled by ``roll``."""
        xs = np.array([self.cx - 1.15 * self.rx, self.cx + 1.15 * self.rx])
        ys = np.array([self.cy - 0.8 * self.ry, self.cy + 0.98 * self.ry])
        px, py = self.pivot
        c, s = math.cos(roll), math.sin(roll)
        corners = np.array([(x, y) for x in xs for y in ys]) - (px, py)
        rx = px + c * corners[:, 0] - s * corners[:, 1]
        ry = py + s * corners[:, 0] + c * corners[:, 1]
        return float(rx.min()), float(ry.min()), float(rx.max()), float(ry.max())


@dataclass(frozen=True)
class Pose:
    """What moves per frame: ``roll`` (radians, positive turns the face clockwise on screen), mouth
    ``opening`` in [0, 1] and ``width`` (1 = rest), ``eyes_open`` in [0, 1] (0 = lids shut)."""

    roll: float = 0.0
    opening: float = 0.0
    width: float = 1.0
    eyes_open: float = 1.0


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (first-order: level value over its gradient)."""
    u, v = (x - cx) / rx, (y - cy) / ry
    q = np.sqrt(u * u + v * v)
    grad = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / np.maximum(q, 1e-6)
    return (q - 1.0) / np.maximum(grad, 1e-6)


def _segment(x: np.ndarray, y: np.ndarray, ax: float, ay: float, bx: float, by: float, radius: float) -> np.ndarray:
    """Signed distance to a capsule: the segment a-b thickened by ``radius``."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(x - ax - t * dx, y - ay - t * dy) - radius


def _box(x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Signed distance to an axis-aligned rectangle."""
    qx = np.abs(x - (x0 + x1) / 2) - (x1 - x0) / 2
    qy = np.abs(y - (y0 + y1) / 2) - (y1 - y0) / 2
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


class _Canvas:
    """An RGB float image that shapes are painted onto, front over back."""

    def __init__(self, size: int, top: Color, bottom: Color):
        self.size = size
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(grid, grid, indexing="ij")
        ramp = grid[:, None, None]
        self.rgb = np.asarray(top, np.float32) * (1 - ramp) + np.asarray(bottom, np.float32) * ramp
        self.rgb = np.broadcast_to(self.rgb, (size, size, 3)).copy()

    def coverage(self, distance: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - distance * self.size, 0.0, 1.0)

    def paint(self, distance: np.ndarray, color: Color | np.ndarray, opacity: float = 1.0) -> None:
        """Blend ``color`` (RGB, or a colour field ``[size, size, 3]``) in over the shape's coverage."""
        self.blend(self.coverage(distance) * opacity, color)

    def blend(self, weight: np.ndarray, color: Color | np.ndarray) -> None:
        self.rgb += (np.asarray(color, np.float32) - self.rgb) * weight[..., None]


def _scaled(color: Color, factor: float) -> Color:
    return tuple(min(255.0, c * factor) for c in color)


def render(identity: Identity, pose: Pose = Pose(), size: int = 64) -> np.ndarray:
    """Draw one frame. Returns uint8 [size, size, 3] RGB."""
    ident = identity
    canvas = _Canvas(size, ident.background, ident.background_bottom)
    x, y = canvas.x, canvas.y
    texture = ident.texture
    if texture is not None:
        canvas.rgb = texture.background.paint(canvas.rgb, x, y)
    cx, cy, rx, ry = ident.cx, ident.cy, ident.rx, ident.ry
    skin, shade = ident.skin, _scaled(ident.skin, 0.86)

    shirt = ident.shirt if texture is None else texture.shirt.paint(ident.shirt, x, y)
    canvas.paint(_ellipse(x, y, cx, cy + 0.62 * ry + 0.32, 0.40, 0.31), shirt)
    neck_half = 0.38 * rx
    canvas.paint(_box(x, y, cx - neck_half, cy + 0.4 * ry, cx + neck_half, cy + 0.62 * ry + 0.2), shade)
    v_neck = np.maximum(_segment(x, y, cx, cy + 0.62 * ry + 0.01, cx, cy + 0.62 * ry + 0.09, 0.0) - 0.04 * (
        1 - np.clip((y - (cy + 0.62 * ry + 0.01)) / 0.09, 0, 1)), cy + 0.62 * ry + 0.0 - y)
    canvas.paint(v_neck, shade)
    chin_shadow = np.exp(-(((x - cx) / (0.55 * rx)) ** 2 + ((y - (cy + 0.92 * ry)) / (0.2 * ry)) ** 2))
    canvas.blend(0.45 * chin_shadow * (canvas.coverage(_box(x, y, cx - neck_half, cy, cx + neck_half, 1.0))),
                 _scaled(skin, 0.55))

    # The head group, evaluated in head coordinates (the frame rotated back by the roll).
    px, py = ident.pivot
    c, s = math.cos(pose.roll), math.sin(pose.roll)
    hx = (px + c * (x - px) + s * (y - py)).astype(np.float32)
    hy = (py - s * (x - px) + c * (y - py)).astype(np.float32)
    hair = ident.hair if texture is None else texture.hair.paint(ident.hair, hx, hy)
    volume, style = ident.hair_volume, ident.hair_style
    if style == "long":
        canvas.paint(np.minimum(_ellipse(hx, hy, cx, cy - 0.2 * ry, 1.2 * rx * volume, 1.0 * ry * volume),
                                _box(hx, hy, cx - 1.18 * rx * volume, cy - 0.2 * ry, cx + 1.18 * rx * volume,
                                     cy + 1.05 * ry) + 0.01), hair)
    elif style == "curly":
        canvas.paint(_ellipse(hx, hy, cx, cy - 0.22 * ry, 1.42 * rx * volume, 1.0 * ry * volume), hair)
    elif style in ("short", "bangs"):
        canvas.paint(_ellipse(hx, hy, cx, cy - 0.38 * ry, 1.16 * rx * volume, 0.9 * ry * volume), hair)
    for side in (-1, 1):
        canvas.paint(_ellipse(hx, hy, cx + side * 0.98 * rx, cy - 0.08 * ry, 0.14 * rx, 0.23 * ry), shade)
    jaw = 0.3 * pose.opening * 0.05
    face = np.where(hy < cy, _ellipse(hx, hy, cx, cy, rx, ry), _ellipse(hx, hy, cx, cy, rx, ry + jaw))
    canvas.paint(face, skin)
    inside_face = canvas.coverage(face)

    def soft(fx: float, fy: float, sx: float, sy: float, amount: float, color: Color) -> None:
        weight = amount * np.exp(-(((hx - fx) / sx) ** 2 + ((hy - fy) / sy) ** 2)) * inside_face
        canvas.blend(weight, color)

    eye_y = cy + ident.eye_y * ry
    for side in (-1, 1):
        ex = cx + side * ident.eye_dx * rx
        soft(ex, eye_y - 0.005, 0.055, 0.035, 0.3, _scaled(skin, 0.72))
        soft(ex + side * 0.01, cy + 0.45 * ry, 0.045, 0.03, 0.22, (236, 150, 140))

    cap_depth = {"short": 0.72, "long": 0.72, "buzz": 0.8, "bangs": 0.5, "curly": 0.66}[style]
    cap = np.maximum(_ellipse(hx, hy, cx, cy - 0.45 * ry, 1.02 * rx, 0.62 * ry), hy - (cy - cap_depth * ry))
    canvas.paint(cap, hair, opacity=0.45 if style == "buzz" else 1.0)

    brow_color = _scaled(ident.hair, 0.8) if sum(ident.hair) < 500 else (90, 70, 55)
    brow_y = cy + ident.brow_y * ry
    for side in (-1, 1):
        ex = cx + side * ident.eye_dx * rx
        inner, outer = ex - side * 0.05, ex + side * 0.05
        canvas.paint(_segment(hx, hy, inner, brow_y + 0.006 - ident.brow_tilt * 0.01, ex, brow_y - 0.006, 0.007),
                     brow_color)
        canvas.paint(_segment(hx, hy, ex, brow_y - 0.006, outer, brow_y + 0.004, 0.007), brow_color)

    lid = max(pose.eyes_open, 0.0)
    for side in (-1, 1):
        ex = cx + side * ident.eye_dx * rx
        erx, ery = ident.eye_rx, ident.eye_ry
        if lid > 0.05:
            white = _ellipse(hx, hy, ex, eye_y, erx, ery * lid)
            canvas.paint(np.abs(white) - 0.004, (70, 50, 40))
            canvas.paint(white, EYE_WHITE)
            iris_r = 0.95 * ery
            canvas.paint(np.maximum(_ellipse(hx, hy, ex, eye_y, iris_r, iris_r), white), ident.iris)
            canvas.paint(np.maximum(_ellipse(hx, hy, ex, eye_y, 0.45 * iris_r, 0.45 * iris_r), white), (15, 10, 10))
            canvas.paint(np.maximum(np.abs(white) - 0.006, hy - eye_y), LASH)
        else:
            canvas.paint(_segment(hx, hy, ex - erx, eye_y, ex + erx, eye_y, 0.005), LASH)

    nose_top, nose_bottom = cy + 0.02 * ry, cy + ident.nose_len * ry
    canvas.paint(_segment(hx, hy, cx - 0.006, nose_top, cx - 0.018, nose_bottom - 0.01, 0.004), _scaled(skin, 0.78))
    for side in (-1, 1):
        canvas.paint(_ellipse(hx, hy, cx + side * 0.022, nose_bottom, 0.011, 0.007), _scaled(skin, 0.62))

    _draw_mouth(canvas, hx, hy, ident, pose)
    if texture is not None:
        canvas.rgb *= texture.shading(x, y)[..., None]
    return np.clip(np.round(canvas.rgb), 0, 255).astype(np.uint8)


def _draw_mouth(canvas: _Canvas, hx: np.ndarray, hy: np.ndarray, ident: Identity, pose: Pose) -> None:
    """Lips around a dark cavity whose height follows ``pose.opening`` (the lower lip travels 3/4 of it)."""
    mx, my = ident.mouth_center
    half = ident.mouth_w * ident.rx * pose.width
    gap = MAX_GAP * max(0.0, min(1.0, pose.opening))
    upper_edge, lower_edge = my - 0.25 * gap, my + 0.75 * gap
    lips, upper_lip = ident.lips, _scaled(ident.lips, 1.06)
    lower = np.maximum(_ellipse(hx, hy, mx, lower_edge, 0.96 * half, 0.034), lower_edge - hy)
    upper = np.maximum(_ellipse(hx, hy, mx, upper_edge, half, 0.02), hy - upper_edge)
    if gap > 1e-3:
        cavity = _ellipse(hx, hy, mx, (upper_edge + lower_edge) / 2, 0.9 * half, gap / 2 + 0.004)
        canvas.paint(cavity, CAVITY)
        teeth = np.maximum(cavity, hy - (upper_edge + 0.3 * gap))
        canvas.paint(teeth, TEETH)
    canvas.paint(lower, lips)
    canvas.paint(upper, upper_lip)
    canvas.paint(_segment(hx, hy, mx - 0.95 * half, my, mx + 0.95 * half, my, 0.003), _scaled(lips, 0.6),
                 opacity=max(0.0, 1.0 - gap / 0.01))
