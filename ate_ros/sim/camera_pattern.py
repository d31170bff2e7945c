"""A synthetic moving picture per camera, standing in for renders of the simulated scene.

Each camera gets its own background (a two-colour gradient chosen from its name), a disc that
moves smoothly with the frame number, and the frame number itself twice: as text for people
looking at the stream, and as a black/white bar code along the top edge that
:func:`frame_number` reads back, so tests can tell frames and cameras apart after JPEG
compression and resizing. The background is computed once per camera and size, so a frame
costs one copy and two small drawings (about 1 ms at 640x480).
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["CameraPattern", "FRAME_BITS", "frame_number", "render_pattern"]

#: Bits of the frame-number bar code; frame numbers wrap at 2**FRAME_BITS (6 days at 30 fps).
FRAME_BITS = 24
#: The bar code band is this fraction of the image height (at least 2 rows).
_BAND_FRACTION = 1 / 24
#: The disc goes round its path in these many frames, horizontally and vertically.
_PERIOD_X, _PERIOD_Y = 120, 90


def _band_rows(height: int) -> int:
    return max(2, math.ceil(height * _BAND_FRACTION))


def _cell_edges(width: int) -> np.ndarray:
    return np.linspace(0, width, FRAME_BITS + 1).round().astype(int)


def _hsv_to_rgb(hue: int, saturation: int, value: int) -> np.ndarray:
    hsv = np.array([[[hue % 180, saturation, value]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


class CameraPattern:
    """Frames of one camera at one size; ``render(k)`` is frame ``k``."""

    def __init__(self, name: str, width: int, height: int) -> None:
        if width < FRAME_BITS or height < 8:
            raise ValueError(f"camera {name}: pattern needs at least {FRAME_BITS}x8 pixels, "
                             f"got {width}x{height}")
        self.name, self.width, self.height = name, width, height
        seed = zlib.crc32(name.encode("utf-8"))
        # Two hues far apart on the wheel, from separate bits of the name's hash, so that two
        # cameras differ in both ends of their gradient even when one hue comes out close.
        hue = seed % 180
        near = _hsv_to_rgb(hue, 200, 230)
        far = _hsv_to_rgb(hue + 60 + (seed >> 8) % 60, 255, 70)
        angle = 2 * math.pi * ((seed >> 16) % 360) / 360
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        self._background = (near * (1 - t[..., None]) + far * t[..., None]).astype(np.uint8)
        self._phase = 2 * math.pi * ((seed >> 4) % 1000) / 1000
        self._radius = max(2, min(width, height) // 10)
        self._disc_rgb = tuple(int(255 - c) for c in near)  # stands out from the background
        self._band = _band_rows(height)
        self._edges = _cell_edges(width)

    def disc_centre(self, k: int) -> tuple:
        """Where the disc is in frame ``k`` (pixels): a Lissajous path, smooth in ``k``."""
        top = self._band + self._radius
        cx, cy = self.width / 2, (top + self.height - self._radius) / 2
        ax = self.width / 2 - self._radius - 1
        ay = max((self.height - self._radius - top) / 2 - 1, 0.0)
        return (cx + ax * math.sin(2 * math.pi * k / _PERIOD_X + self._phase),
                cy + ay * math.sin(2 * math.pi * k / _PERIOD_Y + 2 * self._phase))

    def render(self, k: int) -> np.ndarray:
        """Frame ``k`` as uint8 RGB ``[height, width, 3]``."""
        img = self._background.copy()
        x, y = self.disc_centre(k)
        # Sub-pixel centre (shift=4) so that the motion is smooth, not in whole-pixel steps.
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), self._radius * 16,
                   self._disc_rgb, thickness=-1, lineType=cv2.LINE_AA, shift=4)
        code = k % (1 << FRAME_BITS)
        band = img[:self._band]
        for bit in range(FRAME_BITS):
            on = (code >> (FRAME_BITS - 1 - bit)) & 1
            band[:, self._edges[bit]:self._edges[bit + 1]] = 255 if on else 0
        scale = self.height / 480
        if scale >= 0.25:
            cv2.putText(img, f"{self.name} {k}", (int(8 * scale) + 2, self._band + int(30 * scale)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale)),
                        cv2.LINE_AA)
        return img


@lru_cache(maxsize=16)
def _pattern(name: str, width: int, height: int) -> CameraPattern:
    return CameraPattern(name, width, height)


def render_pattern(name: str, k: int, width: int, height: int) -> np.ndarray:
    """Frame ``k`` of camera ``name`` (patterns are cached per camera and size)."""
    return _pattern(name, width, height).render(k)


def frame_number(rgb: np.ndarray) -> int:
    """The frame number coded along the top edge of a pattern frame (any size, JPEG-safe).

    Reads the middle of each bar code cell in the middle row of the band, in proportion to
    the image's size, so a frame that was resized or compressed decodes the same.
    """
    height, width = rgb.shape[:2]
    row = rgb[min(int(height * _BAND_FRACTION / 2), height - 1)].astype(np.float32).mean(axis=1)
    edges = np.linspace(0, width, FRAME_BITS + 1)
    code = 0
    for bit in range(FRAME_BITS):
        lo, hi = edges[bit], edges[bit + 1]
        first = min(int(lo + (hi - lo) / 4), width - 1)
        cell = row[first:max(first + 1, int(hi - (hi - lo) / 4))]
        code = (code << 1) | int(cell.mean() > 127)
    return code
