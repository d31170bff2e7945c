"""The newest frame of one camera in shared memory: the twin host creates the block, its render
process (`twin_render`) writes the frames, a camera node reads them.

One block per camera: a header (sequence, stamp, width, height) and one RGB frame. The header's
sequence is a seqlock: odd while the writer copies a frame in, even once it is whole, so a
reader that saw the same even sequence before and after its copy holds a whole frame, never
half of two. The writer never waits for a reader; a reader that copies while a frame is being
written tries again.

Blocks are named by `ate_core.robot.config.twin_frame_block`.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from multiprocessing import shared_memory
from typing import Optional, Tuple

import numpy as np

#: sequence (u64), stamp in time.monotonic_ns (u64), width (u32), height (u32).
_HEADER = struct.Struct("<QQII")
_HEADER_BYTES = 64  # the frame starts cache-line aligned
#: How often a reader retries a copy that a write overlapped before it gives up for now.
_READ_TRIES = 20
#: Where POSIX shared memory lives on Linux.
_SHM_DIR = "/dev/shm"


class FrameWriter:
    """Creates the block (replacing a stale one of the same name) and writes frames into it;
    `attach` writes into a block another process created."""

    def __init__(self, name: str, width: int, height: int) -> None:
        self.name = name
        self.width, self.height = int(width), int(height)
        size = _HEADER_BYTES + self.width * self.height * 3
        try:
            stale = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            pass
        else:  # left by a host that was killed
            stale.close()
            stale.unlink()
        self._shm: Optional[shared_memory.SharedMemory] = shared_memory.SharedMemory(
            name=name, create=True, size=size)
        self._map: Optional[mmap.mmap] = None
        self._buf = self._shm.buf
        self._sequence = 0
        self._frame = np.ndarray((self.height, self.width, 3), np.uint8, self._buf,
                                 _HEADER_BYTES)
        _HEADER.pack_into(self._buf, 0, 0, 0, self.width, self.height)

    @classmethod
    def attach(cls, name: str) -> "FrameWriter":
        """Write into the block `name` that another process created and will remove (the twin
        host creates its cameras' blocks, its render process fills them). Mapped from /dev/shm
        directly, as `FrameReader` does, so this process never removes it; numbering goes on
        from the block's newest frame. FileNotFoundError while there is none."""
        self = cls.__new__(cls)
        self.name = name
        with open(os.path.join(_SHM_DIR, name), "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self._shm = None
        self._buf = memoryview(self._map)
        sequence, _, self.width, self.height = _HEADER.unpack_from(self._buf, 0)
        self._sequence = sequence + sequence % 2  # a writer that died mid-frame left it odd
        self._frame = np.ndarray((self.height, self.width, 3), np.uint8, self._buf,
                                 _HEADER_BYTES)
        return self

    def write(self, rgb: np.ndarray, stamp_ns: int) -> int:
        """Publish `rgb` (height x width x 3 uint8) taken at `stamp_ns` (monotonic); its
        sequence number."""
        buf = self._buf
        _HEADER.pack_into(buf, 0, self._sequence + 1, stamp_ns, self.width, self.height)
        self._frame[...] = rgb
        self._sequence += 2
        _HEADER.pack_into(buf, 0, self._sequence, stamp_ns, self.width, self.height)
        return self._sequence // 2

    def close(self) -> None:
        """Remove the block if this writer created it (readers holding it keep their mapping
        until they close); an attached writer only lets go of it."""
        del self._frame
        if self._shm is None:
            assert self._map is not None
            self._buf.release()
            self._map.close()
            return
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


class FrameReader:
    """Attaches to a block a `FrameWriter` made; raises FileNotFoundError while there is none.

    The block is mapped from /dev/shm directly, not through `SharedMemory`: that would register
    it with this process's resource tracker, which removes it when this process exits, under
    the writer and every other reader.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        with open(os.path.join(_SHM_DIR, name), "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._map)
        _, _, self.width, self.height = _HEADER.unpack_from(self._buf, 0)
        self._frame = np.ndarray((self.height, self.width, 3), np.uint8, self._buf,
                                 _HEADER_BYTES)

    def sequence(self) -> int:
        """Frames written so far (the newest frame's number)."""
        return _HEADER.unpack_from(self._buf, 0)[0] // 2

    def read(self) -> Optional[Tuple[int, int, np.ndarray]]:
        """(sequence, stamp in monotonic ns, a copy of the frame) of the newest whole frame;
        None when there is none yet or writes kept overlapping the copy."""
        for _ in range(_READ_TRIES):
            before, stamp, _, _ = _HEADER.unpack_from(self._buf, 0)
            if before == 0:
                return None
            if before % 2:
                time.sleep(0.0002)
                continue
            rgb = self._frame.copy()
            if _HEADER.unpack_from(self._buf, 0)[0] == before:
                return before // 2, stamp, rgb
        return None

    def close(self) -> None:
        del self._frame
        self._buf.release()
        self._map.close()
