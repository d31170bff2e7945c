"""Recorded demonstrations on disk: one directory per episode, safetensors + JSON + JPEG.

Layout of a data set (``ate_episodes`` version 1)::

    <root>/info.json                               DatasetInfo (embodiment, fps, joints, cameras)
    <root>/episodes/episode_000000/meta.json       {"task": str, "length": T, ...free extra}
    <root>/episodes/episode_000000/data.safetensors
        state        float32 [T, D]   measured joints at step t (rad; grippers: opening in m)
        action       float32 [T, D]   joint targets commanded at step t, same layout
        timestamp_s  float64 [T]      strictly increasing
        env_state    float32 [T, E]   only in a data set with env_state_names: the scene's
                                      low-dimensional state at step t (object poses, targets),
                                      LeRobot's ``observation.environment_state``
    <root>/episodes/episode_000000/<camera>.safetensors
        jpeg         uint8 [nbytes]   the T frames' JPEG files, concatenated
        offsets      int64 [T + 1]    frame t is jpeg[offsets[t]:offsets[t + 1]]

JPEG keeps a camera stream about 20x smaller than raw frames while a frame stays randomly
accessible (slice by offsets, decode one image), which is what a training sampler needs; video
codecs would force decoding from the last keyframe. Nothing is ever unpickled: safetensors and
JSON only, so a data set from elsewhere cannot execute code.

An episode is written into a hidden sibling directory and renamed into place once complete,
so a crash leaves either the whole episode or an ignored ``.tmp-*`` directory, never a half
episode that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ate_core.io import fsync_file as _fsync_file, fsync_dir as _fsync_dir
from ate_core.data.spaces import ActionSpaceError, default_action_space

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_JPEG_QUALITY",
    "EpisodeFormatError",
    "DatasetInfo",
    "Episode",
    "EpisodeReader",
    "EpisodeWriter",
    "create_dataset",
    "read_info",
    "write_episode",
    "list_episodes",
    "episode_dir",
    "default_joint_names",
    "encode_jpeg",
    "decode_jpeg",
]

FORMAT = "ate_episodes"
VERSION = 1
DEFAULT_JPEG_QUALITY = 90

INFO_FILE = "info.json"
META_FILE = "meta.json"
DATA_FILE = "data.safetensors"
EPISODES_DIR = "episodes"

PathLike = Union[str, "os.PathLike[str]"]

_EPISODE_NAME = re.compile(r"^episode_(\d{6,})$")
# Camera names become file names; "data" would collide with data.safetensors.
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_CAMERAS = ("data", "meta", "info")


class EpisodeFormatError(ValueError):
    """A data set or episode on disk (or about to be written) is malformed.

    ``source`` is the file (or object) at fault, ``message`` what is wrong with it.
    """

    def __init__(self, source: Union[str, Path], message: str) -> None:
        self.source, self.message = str(source), message
        super().__init__(f"{source}: {message}")

    def __reduce__(self):  # pickled whole: a worker process's error reaches its parent intact
        return type(self), (self.source, self.message)


def default_joint_names(embodiment: str) -> Tuple[str, ...]:
    """The native joint order of a known embodiment (``ate_core.robot.layout``'s naming).

    ``rm75_bimanual``: left_joint1..7, left_gripper, right_joint1..7, right_gripper, the order
    :func:`~ate_core.data.spaces.default_action_space` maps into the unified slots.
    ``rm65_single``: joint1..6, gripper.
    """
    if embodiment == "rm75_bimanual":
        return tuple(f"{side}_{j}" for side in ("left", "right")
                     for j in [f"joint{i}" for i in range(1, 8)] + ["gripper"])
    if embodiment == "rm65_single":
        return tuple(f"joint{i}" for i in range(1, 7)) + ("gripper",)
    raise EpisodeFormatError("embodiment", f"no default joint names for {embodiment!r}")


# ------------------------------------------------------------------------------- dataset info


@dataclass(frozen=True)
class DatasetInfo:
    """What every episode of a data set shares.

    ``cameras`` maps a camera name to its frame size ``(height, width)``, in a fixed order
    (the order written to info.json). ``joint_names`` names the D columns of state and action;
    D must be the embodiment's native dimension in the default unified action space.
    ``env_state_names`` names the E columns of each episode's ``env_state`` (empty: the data
    set has none; info.json may leave the key out).
    """

    embodiment: str
    fps: float
    joint_names: Tuple[str, ...]
    cameras: Mapping[str, Tuple[int, int]] = field(default_factory=dict)
    env_state_names: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        src = "DatasetInfo"
        if not isinstance(self.embodiment, str) or not self.embodiment:
            raise EpisodeFormatError(src, f"embodiment: expected a non-empty string, "
                                          f"got {self.embodiment!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) \
                or not math.isfinite(self.fps) or self.fps <= 0:
            raise EpisodeFormatError(src, f"fps: expected a positive number, got {self.fps!r}")
        object.__setattr__(self, "fps", float(self.fps))
        if isinstance(self.joint_names, str):
            raise EpisodeFormatError(src, "joint_names: expected a list of names, got a string")
        names = tuple(self.joint_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise EpisodeFormatError(src, f"joint_names: expected non-empty strings, "
                                          f"got {list(names)!r}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise EpisodeFormatError(src, f"joint_names: duplicates {dup}")
        object.__setattr__(self, "joint_names", names)
        try:
            dim = default_action_space().dim(self.embodiment)
        except ActionSpaceError as e:
            raise EpisodeFormatError(src, f"embodiment: {e}") from None
        if len(names) != dim:
            raise EpisodeFormatError(src, f"joint_names: {len(names)} names, but embodiment "
                                          f"{self.embodiment!r} has {dim} action dims")
        if not isinstance(self.cameras, Mapping):
            raise EpisodeFormatError(src, f"cameras: expected a mapping name -> [height, width], "
                                          f"got {type(self.cameras).__name__}")
        cameras: Dict[str, Tuple[int, int]] = {}
        for name, size in self.cameras.items():
            if not isinstance(name, str) or not _CAMERA_NAME.match(name) \
                    or name in _RESERVED_CAMERAS:
                raise EpisodeFormatError(src, f"cameras: {name!r} is not a usable camera name "
                                              f"(letters, digits, '_'; not {_RESERVED_CAMERAS})")
            try:
                h, w = size
            except (TypeError, ValueError):
                raise EpisodeFormatError(src, f"cameras.{name}: expected [height, width], "
                                              f"got {size!r}") from None
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                       for v in (h, w)):
                raise EpisodeFormatError(src, f"cameras.{name}: expected positive integer "
                                              f"[height, width], got {size!r}")
            cameras[name] = (int(h), int(w))
        object.__setattr__(self, "cameras", cameras)
        if isinstance(self.env_state_names, str):
            raise EpisodeFormatError(src, "env_state_names: expected a list of names, got a string")
        env = tuple(self.env_state_names)
        if not all(isinstance(n, str) and n for n in env) or len(set(env)) != len(env):
            raise EpisodeFormatError(src, f"env_state_names: expected distinct non-empty strings, "
                                          f"got {list(env)!r}")
        object.__setattr__(self, "env_state_names", env)

    def __hash__(self) -> int:  # the camera dict is not hashable; its contents are
        return hash((self.embodiment, self.fps, self.joint_names, tuple(self.cameras.items()),
                     self.env_state_names))

    @property
    def dim(self) -> int:
        return len(self.joint_names)

    @property
    def env_dim(self) -> int:
        return len(self.env_state_names)

    def to_json(self) -> Dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION, "embodiment": self.embodiment,
               "fps": self.fps, "joint_names": list(self.joint_names),
               "cameras": {k: list(v) for k, v in self.cameras.items()}}
        if self.env_state_names:
            out["env_state_names"] = list(self.env_state_names)
        return out

    @classmethod
    def from_json(cls, d: Any, source: Union[str, Path] = "info.json") -> "DatasetInfo":
        if not isinstance(d, dict):
            raise EpisodeFormatError(source, f"expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise EpisodeFormatError(source, f"format: {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise EpisodeFormatError(source, f"version: {d.get('version')!r} is not supported "
                                             f"(this reader knows version {VERSION})")
        missing = [k for k in ("embodiment", "fps", "joint_names", "cameras") if k not in d]
        if missing:
            raise EpisodeFormatError(source, f"missing keys {missing}")
        try:
            return cls(embodiment=d["embodiment"], fps=d["fps"], joint_names=d["joint_names"],
                       cameras=d["cameras"], env_state_names=d.get("env_state_names", ()))
        except EpisodeFormatError as e:
            raise EpisodeFormatError(source, e.message) from None


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise EpisodeFormatError(path, f"missing {what}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EpisodeFormatError(path, f"not valid JSON ({e})") from None


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_info(root: PathLike) -> DatasetInfo:
    """The data set's :class:`DatasetInfo`; :class:`EpisodeFormatError` if absent or malformed."""
    path = Path(root) / INFO_FILE
    return DatasetInfo.from_json(_read_json(path, "dataset info"), path)


def create_dataset(root: PathLike, info: DatasetInfo) -> Path:
    """Make ``root`` a data set described by ``info``; a no-op if it already is exactly that.

    A directory that already holds a different info.json is refused: its episodes were
    recorded under other joints, cameras or rates and must not be mixed.
    """
    root = Path(root)
    path = root / INFO_FILE
    if path.exists():
        existing = read_info(root)
        if existing != info:
            raise EpisodeFormatError(path, f"holds a different dataset info ({existing}); "
                                           f"refusing to overwrite it with {info}")
        (root / EPISODES_DIR).mkdir(exist_ok=True)
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / EPISODES_DIR).mkdir(exist_ok=True)
    tmp = root / f".tmp-info-{secrets.token_hex(6)}.json"  # open() honours the umask
    try:
        _write_json(tmp, info.to_json())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return root


def episode_dir(root: PathLike, index: int) -> Path:
    return Path(root) / EPISODES_DIR / f"episode_{int(index):06d}"


def list_episodes(root: PathLike) -> List[int]:
    """Indices of the complete episodes under ``root``, ascending (temporary dirs ignored)."""
    base = Path(root) / EPISODES_DIR
    if not base.is_dir():
        if not (Path(root) / INFO_FILE).is_file():
            raise EpisodeFormatError(Path(root) / INFO_FILE, "missing dataset info")
        return []
    out = []
    for entry in base.iterdir():
        m = _EPISODE_NAME.match(entry.name)
        if m and entry.is_dir():
            out.append(int(m.group(1)))
    return sorted(out)


# ------------------------------------------------------------------------------------ episode


@dataclass(frozen=True, eq=False)
class Episode:
    """One demonstration in memory, native units.

    ``frames[camera]`` is uint8 RGB ``[T, H, W, 3]``. ``extra`` holds free metadata stored in
    meta.json next to ``task`` and ``length`` (e.g. a synthetic episode's target position).
    Arrays are converted to their on-disk dtypes and checked for shape, finiteness and
    timestamp order on construction.
    """

    task: str
    state: np.ndarray
    action: np.ndarray
    timestamp_s: np.ndarray
    frames: Mapping[str, np.ndarray] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    env_state: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        src = "Episode"
        if not isinstance(self.task, str):
            raise EpisodeFormatError(src, f"task: expected a string, got {self.task!r}")
        state = _as_float(self.state, np.float32, f"{src}.state")
        action = _as_float(self.action, np.float32, f"{src}.action")
        ts = _as_float(self.timestamp_s, np.float64, f"{src}.timestamp_s")
        _check_arrays(state, action, ts, src)
        frames: Dict[str, np.ndarray] = {}
        for cam, f in self.frames.items():
            f = np.asarray(f)
            if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
                raise EpisodeFormatError(src, f"frames[{cam!r}]: expected uint8 [T, H, W, 3] RGB, "
                                              f"got {f.dtype} {list(f.shape)}")
            if f.shape[0] != state.shape[0]:
                raise EpisodeFormatError(src, f"frames[{cam!r}]: {f.shape[0]} frames for "
                                              f"{state.shape[0]} steps")
            frames[cam] = f
        env = None
        if self.env_state is not None:
            env = _as_float(self.env_state, np.float32, f"{src}.env_state")
            if env.ndim != 2 or env.shape[0] != state.shape[0] or not np.all(np.isfinite(env)):
                raise EpisodeFormatError(src, f"env_state: expected finite [{state.shape[0]}, E] "
                                              f"(one row per step), got {list(env.shape)}")
        object.__setattr__(self, "env_state", env)
        extra = dict(self.extra)
        clash = sorted(set(extra) & {"task", "length"})
        if clash:
            raise EpisodeFormatError(src, f"extra: keys {clash} are reserved")
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "timestamp_s", ts)
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "extra", extra)

    @property
    def length(self) -> int:
        return int(self.state.shape[0])

    def check(self, info: DatasetInfo, source: Union[str, Path] = "Episode") -> None:
        """Raise :class:`EpisodeFormatError` unless this episode fits the data set ``info``."""
        if self.state.shape[1] != info.dim:
            raise EpisodeFormatError(source, f"state: {self.state.shape[1]} dims, but the dataset "
                                             f"has {info.dim} joint_names")
        missing = [c for c in info.cameras if c not in self.frames]
        unknown = [c for c in self.frames if c not in info.cameras]
        if missing or unknown:
            raise EpisodeFormatError(source, f"frames: cameras {sorted(self.frames)} do not match "
                                             f"the dataset's {list(info.cameras)}")
        for cam, (h, w) in info.cameras.items():
            got = list(self.frames[cam].shape[1:3])
            if got != [h, w]:
                raise EpisodeFormatError(source, f"frames[{cam!r}]: size {got}, the dataset "
                                                 f"says [{h}, {w}]")
        env = 0 if self.env_state is None else self.env_state.shape[1]
        if env != info.env_dim:
            raise EpisodeFormatError(source, f"env_state: {env} columns, the dataset has "
                                             f"{info.env_dim} env_state_names")


def _as_float(x: Any, dtype: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise EpisodeFormatError(what, f"not an array ({e})") from None
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise EpisodeFormatError(what, f"expected numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_arrays(state: np.ndarray, action: np.ndarray, ts: np.ndarray,
                  source: Union[str, Path], fields: Tuple[str, str, str] = (
                      "state", "action", "timestamp_s")) -> None:
    s_name, a_name, t_name = fields
    if state.ndim != 2 or state.shape[0] == 0 or state.shape[1] == 0:
        raise EpisodeFormatError(source, f"{s_name}: expected shape [T>0, D>0], "
                                         f"got {list(state.shape)}")
    if action.shape != state.shape:
        raise EpisodeFormatError(source, f"{a_name}: shape {list(action.shape)} differs from "
                                         f"{s_name}'s {list(state.shape)}")
    if ts.shape != (state.shape[0],):
        raise EpisodeFormatError(source, f"{t_name}: shape {list(ts.shape)}, expected "
                                         f"[{state.shape[0]}] (one per step)")
    for name, arr in ((s_name, state), (a_name, action), (t_name, ts)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise EpisodeFormatError(source, f"{name}: non-finite value at index "
                                             f"{np.argwhere(bad)[0].tolist()}")
    if ts.shape[0] > 1:
        steps = np.diff(ts)
        if np.any(steps <= 0):
            k = int(np.argmax(steps <= 0))
            raise EpisodeFormatError(source, f"{t_name}: not strictly increasing at step {k + 1} "
                                             f"({ts[k]!r} -> {ts[k + 1]!r})")


# ------------------------------------------------------------------------------------- JPEG


def encode_jpeg(rgb: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """One uint8 RGB [H, W, 3] frame as a JPEG file (OpenCV works in BGR, hence the swap)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a frame of shape {list(rgb.shape)}")
    return buf.tobytes()


def decode_jpeg(data: Union[bytes, np.ndarray]) -> Optional[np.ndarray]:
    """uint8 RGB [H, W, 3], or None if ``data`` is not a decodable colour JPEG."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) \
        else np.ascontiguousarray(data, dtype=np.uint8)
    if buf.size == 0:
        return None
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------ writing


def write_episode(root: PathLike, index: int, episode: Episode,
                  info: Optional[DatasetInfo] = None, *,
                  jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> Path:
    """Write ``episode`` as episode ``index`` of the data set at ``root``; returns its directory.

    With ``info`` the data set is created if needed (and must match if it exists); without, it
    must exist. An existing episode ``index`` is never replaced: :class:`FileExistsError`.
    """
    if info is None:
        info = read_info(root)
    else:
        create_dataset(root, info)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"episode index must be a non-negative int, got {index!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    final = episode_dir(root, index)
    episode.check(info, f"episode {int(index)} for {final}")
    if final.exists():
        raise FileExistsError(f"{final}: episode {int(index)} already exists; "
                              f"refusing to overwrite it")
    # os.mkdir honours the umask (mkdtemp would make it private), so the data set stays
    # readable by whoever may read its parent directory.
    tmp = final.parent / f".tmp-{final.name}-{secrets.token_hex(6)}"
    os.mkdir(tmp)
    try:
        file_mode = os.stat(tmp).st_mode & 0o666
        arrays = {"state": episode.state, "action": episode.action,
                  "timestamp_s": episode.timestamp_s}
        if episode.env_state is not None:
            arrays["env_state"] = episode.env_state
        _save_tensors(arrays, tmp / DATA_FILE, file_mode)
        for cam in info.cameras:
            chunks = [encode_jpeg(f, jpeg_quality) for f in episode.frames[cam]]
            offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(c) for c in chunks])
            jpeg = np.frombuffer(b"".join(chunks), dtype=np.uint8)
            _save_tensors({"jpeg": jpeg, "offsets": offsets}, tmp / f"{cam}.safetensors",
                          file_mode)
        meta = {"task": episode.task, "length": episode.length}
        meta.update(episode.extra)
        _write_json(tmp / META_FILE, meta)
        try:
            os.rename(tmp, final)  # atomic; fails if ``final`` appeared meanwhile with content
        except OSError as e:
            if final.exists():
                raise FileExistsError(f"{final}: episode {int(index)} already exists; "
                                      f"refusing to overwrite it") from e
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    return final


def _save_tensors(tensors: Dict[str, np.ndarray], path: Path, mode: int) -> None:
    save_file(tensors, str(path))
    os.chmod(path, mode)  # safetensors creates its files private
    _fsync_file(path)


class EpisodeWriter:
    """Appends episodes to one data set (creating it from ``info`` if needed).

    :meth:`write` without an index continues after the highest episode on disk, so several
    recording sessions into one directory number their episodes consecutively.
    """

    def __init__(self, root: PathLike, info: DatasetInfo, *,
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> None:
        self.root = Path(root)
        self.info = info
        self.jpeg_quality = int(jpeg_quality)
        create_dataset(self.root, info)

    def next_index(self) -> int:
        existing = list_episodes(self.root)
        return existing[-1] + 1 if existing else 0

    def write(self, episode: Episode, index: Optional[int] = None) -> Path:
        return write_episode(self.root, self.next_index() if index is None else index, episode,
                             self.info, jpeg_quality=self.jpeg_quality)


# ------------------------------------------------------------------------------------ reading


def _open_safetensors(path: Path, what: str) -> Any:
    if not path.is_file():
        raise EpisodeFormatError(path, f"missing {what}")
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError) as e:
        raise EpisodeFormatError(path, f"unreadable safetensors file ({e})") from None


def _load_tensors(path: Path, what: str, expected: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """All tensors named in ``expected`` (name -> dtype), checked for presence and dtype."""
    handle = _open_safetensors(path, what)
    out = {}
    try:
        with handle as f:
            keys = set(f.keys())
            for name, dtype in expected.items():
                if name not in keys:
                    raise EpisodeFormatError(path, f"missing tensor {name!r} "
                                                   f"(has {sorted(keys)})")
                arr = f.get_tensor(name)
                if arr.dtype != dtype:
                    raise EpisodeFormatError(path, f"{name}: dtype {arr.dtype}, expected "
                                                   f"{np.dtype(dtype)}")
                out[name] = arr
    except SafetensorError as e:
        raise EpisodeFormatError(path, f"unreadable safetensors file ({e})") from None
    return out


class EpisodeReader:
    """One episode on disk: arrays loaded and checked on open, frames decoded on demand.

    Holds no open file: each :meth:`frame` call opens the camera file, reads the one frame's
    bytes through safetensors' memory map and decodes them, so a reader can be copied into
    DataLoader worker processes (fork or spawn) and a data set larger than memory stays on disk.
    ``cameras`` limits which camera files are checked on open (default: all in the info).
    """

    def __init__(self, root: PathLike, index: int, *, info: Optional[DatasetInfo] = None,
                 cameras: Optional[Sequence[str]] = None) -> None:
        self.root = Path(root)
        self.index = int(index)
        self.info = read_info(self.root) if info is None else info
        self.path = episode_dir(self.root, self.index)
        if not self.path.is_dir():
            raise EpisodeFormatError(self.path, f"no episode {self.index} in {self.root}")
        meta_path = self.path / META_FILE
        meta = _read_json(meta_path, "episode meta")
        if not isinstance(meta, dict):
            raise EpisodeFormatError(meta_path, "expected a JSON object")
        task, length = meta.get("task"), meta.get("length")
        if not isinstance(task, str):
            raise EpisodeFormatError(meta_path, f"task: expected a string, got {task!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise EpisodeFormatError(meta_path, f"length: expected a positive int, got {length!r}")
        self.task: str = task
        self.length: int = length
        self.extra: Dict[str, Any] = {k: v for k, v in meta.items() if k not in ("task", "length")}

        data_path = self.path / DATA_FILE
        expected = {"state": np.float32, "action": np.float32, "timestamp_s": np.float64}
        if self.info.env_dim:
            expected["env_state"] = np.float32
        arrays = _load_tensors(data_path, "episode data", expected)
        state, action, ts = arrays["state"], arrays["action"], arrays["timestamp_s"]
        _check_arrays(state, action, ts, data_path)
        if state.shape[0] != length:
            raise EpisodeFormatError(data_path, f"state: {state.shape[0]} steps, but "
                                                f"{META_FILE} says length {length}")
        if state.shape[1] != self.info.dim:
            raise EpisodeFormatError(data_path, f"state: {state.shape[1]} dims, but the dataset "
                                                f"has {self.info.dim} joint_names")
        env = arrays.get("env_state")
        if env is not None and (env.shape != (length, self.info.env_dim) or not np.all(np.isfinite(env))):
            raise EpisodeFormatError(data_path, f"env_state: expected finite [{length}, "
                                                f"{self.info.env_dim}], got {list(env.shape)}")
        for arr in (state, action, ts) + (() if env is None else (env,)):
            arr.setflags(write=False)
        #: float32 [T, E], None in a data set without env_state_names.
        self.env_state: Optional[np.ndarray] = env
        self.state: np.ndarray = state
        self.action: np.ndarray = action
        self.timestamp_s: np.ndarray = ts

        if cameras is None:
            cameras = tuple(self.info.cameras)
        self._offsets: Dict[str, np.ndarray] = {}
        for cam in cameras:
            self._load_offsets(cam)

    def __repr__(self) -> str:
        return f"EpisodeReader({str(self.root)!r}, {self.index}, length={self.length})"

    @property
    def cameras(self) -> Tuple[str, ...]:
        return tuple(self.info.cameras)

    def camera_path(self, camera: str) -> Path:
        if camera not in self.info.cameras:
            raise KeyError(f"unknown camera {camera!r}; the dataset has {list(self.info.cameras)}")
        return self.path / f"{camera}.safetensors"

    def _load_offsets(self, camera: str) -> np.ndarray:
        cached = self._offsets.get(camera)
        if cached is not None:
            return cached
        path = self.camera_path(camera)
        handle = _open_safetensors(path, f"camera file for {camera!r}")
        try:
            with handle as f:
                keys = set(f.keys())
                for name in ("jpeg", "offsets"):
                    if name not in keys:
                        raise EpisodeFormatError(path, f"missing tensor {name!r} "
                                                       f"(has {sorted(keys)})")
                jpeg = f.get_slice("jpeg")
                jpeg_shape, jpeg_dtype = jpeg.get_shape(), jpeg.get_dtype()
                offsets = f.get_tensor("offsets")
        except SafetensorError as e:
            raise EpisodeFormatError(path, f"unreadable safetensors file ({e})") from None
        if jpeg_dtype != "U8" or len(jpeg_shape) != 1:
            raise EpisodeFormatError(path, f"jpeg: expected uint8 [nbytes], got {jpeg_dtype} "
                                           f"{list(jpeg_shape)}")
        if offsets.dtype != np.int64 or offsets.shape != (self.length + 1,):
            raise EpisodeFormatError(path, f"offsets: expected int64 [{self.length + 1}] "
                                           f"(length + 1), got {offsets.dtype} "
                                           f"{list(offsets.shape)}")
        if offsets[0] != 0 or offsets[-1] != jpeg_shape[0] or np.any(np.diff(offsets) <= 0):
            raise EpisodeFormatError(path, f"offsets: must rise strictly from 0 to the jpeg size "
                                           f"{jpeg_shape[0]}, got {offsets[0]}..{offsets[-1]}")
        offsets.setflags(write=False)
        self._offsets[camera] = offsets
        return offsets

    def jpeg(self, camera: str, t: int) -> bytes:
        """The stored JPEG file of frame ``t`` (e.g. for a CompressedImage), undecoded."""
        offsets = self._load_offsets(camera)
        t = self._check_step(t)
        path = self.camera_path(camera)
        handle = _open_safetensors(path, f"camera file for {camera!r}")
        try:
            with handle as f:
                data = f.get_slice("jpeg")[int(offsets[t]):int(offsets[t + 1])]
        except SafetensorError as e:
            raise EpisodeFormatError(path, f"unreadable safetensors file ({e})") from None
        return np.asarray(data, dtype=np.uint8).tobytes()

    def frame(self, camera: str, t: int) -> np.ndarray:
        """Frame ``t`` of ``camera``: uint8 RGB [H, W, 3]."""
        rgb = decode_jpeg(self.jpeg(camera, t))
        path = self.camera_path(camera)
        if rgb is None:
            raise EpisodeFormatError(path, f"camera {camera!r} frame {t}: corrupt JPEG "
                                           f"(cannot be decoded)")
        h, w = self.info.cameras[camera]
        if rgb.shape != (h, w, 3):
            raise EpisodeFormatError(path, f"camera {camera!r} frame {t}: size "
                                           f"{list(rgb.shape[:2])}, the dataset says [{h}, {w}]")
        return rgb

    def frames(self, camera: str, steps: Optional[Sequence[int]] = None) -> np.ndarray:
        """uint8 RGB [n, H, W, 3] for ``steps`` (default: every step); repeats decode once."""
        steps = range(self.length) if steps is None else steps
        decoded: Dict[int, np.ndarray] = {}
        out = []
        for t in steps:
            t = int(t)
            if t not in decoded:
                decoded[t] = self.frame(camera, t)
            out.append(decoded[t])
        if not out:
            h, w = self.info.cameras[camera]
            return np.zeros((0, h, w, 3), dtype=np.uint8)
        return np.stack(out)

    def load(self) -> Episode:
        """The whole episode in memory, every frame decoded."""
        return Episode(task=self.task, state=self.state, action=self.action,
                       timestamp_s=self.timestamp_s,
                       frames={cam: self.frames(cam) for cam in self.info.cameras},
                       extra=self.extra, env_state=self.env_state)

    def _check_step(self, t: int) -> int:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"frame index must be an int, got {t!r}")
        if not 0 <= t < self.length:
            raise IndexError(f"{self.path}: frame {t} outside [0, {self.length})")
        return int(t)
