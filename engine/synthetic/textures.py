"""Procedural textures and lighting for the training faces: patterned backgrounds and shirts, streaked
hair, colours from the whole range (blue hair, green skin tints), and a light falling from one side.

The plain cartoon faces have flat colours from a narrow palette, which a model can learn to redraw from its
prior instead of copying from the reference image; faces with these textures cannot be guessed, so training
on them rewards carrying the reference's look over (the identity a stream must keep). Every pattern is a
scalar field in [0, 1] over image coordinates (fractions of the side) that mixes a base colour toward a
second one; hair streaks are evaluated in head coordinates so that they turn with the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Color = tuple[float, float, float]

PATTERNS = ("waves", "stripes", "checks", "blobs", "noise")


@dataclass(frozen=True)
class Pattern:
    """A two-colour pattern: ``kind`` (one of :data:`PATTERNS`), the second ``color`` (0-255 RGB) mixed in up to
    ``amount`` (0-1), spatial ``frequency`` (cycles per image side), ``angle`` (radians), ``phase`` (radians)
    and ``seed`` (the blob centres and the noise grid)."""

    kind: str
    color: Color
    amount: float
    frequency: float
    angle: float
    phase: float
    seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator, low: float = 1.5, high: float = 8.0) -> Pattern:
        """A random pattern of ``low..high`` cycles per side."""
        return cls(kind=PATTERNS[rng.integers(len(PATTERNS))], color=random_color(rng),
                   amount=float(rng.uniform(0.3, 1.0)), frequency=float(rng.uniform(low, high)),
                   angle=float(rng.uniform(0, math.pi)), phase=float(rng.uniform(0, 2 * math.pi)),
                   seed=int(rng.integers(2 ** 31)))

    def field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The pattern's mix weight in [0, 1] at image coordinates ``x``, ``y`` (same shape)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = x * c + y * s, -x * s + y * c
        turn = 2 * math.pi * self.frequency
        if self.kind == "waves":
            f = 0.5 + 0.5 * np.sin(turn * u + self.phase)
        elif self.kind == "stripes":
            f = np.clip(0.5 + 4.0 * np.sin(turn * u + self.phase), 0.0, 1.0)
        elif self.kind == "checks":
            f = np.clip(0.5 + 4.0 * np.sin(turn * u + self.phase) * np.sin(turn * v + self.phase), 0.0, 1.0)
        elif self.kind == "blobs":
            rng = np.random.default_rng(self.seed)
            f = np.zeros_like(x)
            for cx, cy, r in zip(rng.uniform(0, 1, 4), rng.uniform(0, 1, 4), rng.uniform(0.6, 1.4, 4)):
                f = np.maximum(f, np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * (self.frequency * r) ** 2 * 2.0))
        elif self.kind == "noise":
            f = value_noise(x, y, self.frequency, self.seed)
        else:
            raise ValueError(f"pattern kind must be one of {', '.join(PATTERNS)}, got {self.kind!r}")
        return (self.amount * f).astype(np.float32)

    def paint(self, base: Color | np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """float32 [..., 3]: ``base`` (a colour or a colour field) mixed toward :attr:`color` by :meth:`field`."""
        weight = self.field(x, y)[..., None]
        base = np.broadcast_to(np.asarray(base, np.float32), (*x.shape, 3))
        return base + (np.asarray(self.color, np.float32) - base) * weight


@dataclass(frozen=True)
class Texture:
    """The textured look of one identity: ``background``, ``shirt`` and ``hair`` patterns (hair in head
    coordinates) and a light from direction ``light_angle`` (radians, 0 = from the left) that brightens one side
    of the frame and darkens the other by up to ``light`` (a fraction)."""

    background: Pattern
    shirt: Pattern
    hair: Pattern
    light_angle: float
    light: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Texture:
        return cls(background=Pattern.sample(rng), shirt=Pattern.sample(rng, 2.0, 10.0),
                   hair=Pattern.sample(rng, 6.0, 16.0), light_angle=float(rng.uniform(0, 2 * math.pi)),
                   light=float(rng.uniform(0.0, 0.35)))

    def shading(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """float32 [...]: the light's multiplier (1 at the centre of the frame)."""
        c, s = math.cos(self.light_angle), math.sin(self.light_angle)
        return (1.0 - self.light * 2.0 * ((x - 0.5) * c + (y - 0.5) * s)).astype(np.float32)


def random_color(rng: np.random.Generator) -> Color:
    """Any colour: hue uniform, saturation and value over most of their range (0-255 RGB)."""
    return hsv(float(rng.uniform(0, 1)), float(rng.uniform(0.1, 1.0)), float(rng.uniform(0.15, 1.0)))


def hsv(hue: float, saturation: float, value: float) -> Color:
    """HSV (all in [0, 1]) -> RGB 0-255."""
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][i]
    return tuple(255.0 * c for c in rgb)


def value_noise(x: np.ndarray, y: np.ndarray, frequency: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid of ``frequency`` cells per side, interpolated (smoothstep)."""
    cells = max(1, int(math.ceil(frequency)))
    grid = np.random.default_rng(seed).uniform(0, 1, (cells + 2, cells + 2))
    gx, gy = np.clip(x, 0, 1) * cells, np.clip(y, 0, 1) * cells
    ix, iy = np.minimum(gx.astype(int), cells), np.minimum(gy.astype(int), cells)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
    bottom = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy
