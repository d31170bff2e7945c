"""A glance at an episode: a few head-camera frames side by side in one PNG.

Frames are taken every ``period_s`` of simulated time (and at the episode's end) and kept
shrunk, so a 25 s episode holds a few megabytes at most; the strip shows ``count`` of them,
evenly spaced from the first to the last, each labelled with its time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple, Union

import cv2
import numpy as np

from ate_core.twin.twin import Twin

__all__ = ["FrameStrip"]


class FrameStrip:
    """Collects frames of ``camera`` rendered at ``width`` x ``height`` (the stack's camera
    size on the twin) and writes them as one PNG."""

    def __init__(self, width: int, height: int, *, camera: str = "head", period_s: float = 0.5,
                 count: int = 6, frame_width: int = 200) -> None:
        if count < 2:
            raise ValueError(f"FrameStrip: count must be >= 2, got {count}")
        self.camera = camera
        self.width, self.height = int(width), int(height)
        self.period_s = float(period_s)
        self.count = int(count)
        self.frame_size = (int(frame_width), max(1, round(frame_width * height / width)))
        self._frames: List[Tuple[float, np.ndarray]] = []

    def add(self, t_s: float, twin: Twin, last: bool = False) -> None:
        """The camera's view now, at simulated time ``t_s`` (``last``: the episode's end,
        replacing a frame taken at the same time)."""
        if last and self._frames and self._frames[-1][0] == t_s:
            self._frames.pop()
        frame = twin.render(self.camera, self.width, self.height)
        self._frames.append((t_s, cv2.resize(frame, self.frame_size, interpolation=cv2.INTER_AREA)))

    def image(self, title: str = "") -> np.ndarray:
        """The strip, uint8 RGB: a title row over the chosen frames, each with its time."""
        if not self._frames:
            raise ValueError("FrameStrip: no frames")
        picks = np.unique(np.linspace(0, len(self._frames) - 1, self.count).round().astype(int))
        w, h = self.frame_size
        tiles = []
        for i in picks:
            t_s, frame = self._frames[i]
            tile = frame.copy()
            cv2.putText(tile, f"{t_s:.1f} s", (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        row = np.concatenate(tiles, axis=1)
        header = np.full((22, row.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(header, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        return np.concatenate([header, row], axis=0)

    def write(self, path: Union[str, os.PathLike], title: str = "") -> Path:
        path = Path(path)
        if not cv2.imwrite(str(path), cv2.cvtColor(self.image(title), cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the PNG")
        return path
