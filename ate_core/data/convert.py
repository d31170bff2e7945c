"""Recorded takes (episode bags) -> a training data set, resampled with as-of alignment.

Each bag is read through its own robot contract (episode.yaml: which topic is which arm's
state or command, which camera, in which joint order), so conversion needs nothing from the
robot that recorded it. Every stream is indexed by its messages' header stamps (the time of
the observation or the control tick, as the live stack uses them; the bag's log time is only
when the recorder received it). The take is resampled on a grid of ``fps``:
sample k at ``t_k = t_0 + k / fps`` holds, per stream, the **latest message stamped at or
before t_k** (as-of). Nothing stamped after t_k ever enters sample k, so a policy trained on
the data set sees what the robot could have seen at t_k and no more (no future leakage);
``t_0`` is the first time every stream has a sample, and the grid ends at the earliest last
sample of any stream, so no stream is held past its end.

``action`` is the arms' command as-of t_k (the supervisor's target, teleop's or the policy's),
or, with ``action_from="state"`` (kinesthetic teaching: no commands), the measured state.
Failed takes are kept with ``success: false`` in the episode's meta; takes the capture audit
rejected are skipped unless asked for. A bag that cannot be read gives an error naming it and
the rest of the batch still converts. The data set's normalisation statistics are written
next to it (``stats.safetensors``, the checkpoint's flat layout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ate_core.data.bag import BagError, BagReader, header_stamp_ns
from ate_core.data.episode import (DatasetInfo, Episode, EpisodeFormatError, EpisodeWriter,
                                   decode_jpeg, default_joint_names)
from ate_core.data.stats import compute_stats, stats_to_tensors

__all__ = ["ConversionError", "Stream", "asof_indices", "align", "bag_to_episode",
           "convert_bags", "ConversionReport", "STATS_FILE", "main"]

PathLike = Union[str, "os.PathLike[str]"]
STATS_FILE = "stats.safetensors"
ACTION_FROM = ("command", "state")


class ConversionError(BagError):
    """A take that cannot become an episode; names the bag (``path``)."""


@dataclass
class Stream:
    """One stream's samples, sorted by stamp: ``stamps_ns`` int64 ``[N]`` and ``values``
    (an array ``[N, ...]`` or a list of N objects)."""

    name: str
    stamps_ns: np.ndarray
    values: Any

    def __post_init__(self) -> None:
        stamps = np.asarray(self.stamps_ns, dtype=np.int64)
        order = np.argsort(stamps, kind="stable")  # a clock step back must not reorder time
        self.stamps_ns = stamps[order]
        self.values = (np.asarray(self.values)[order] if isinstance(self.values, np.ndarray)
                       else [self.values[i] for i in order])


def asof_indices(stamps_ns: np.ndarray, times_ns: np.ndarray) -> np.ndarray:
    """Per time, the index of the latest stamp at or before it (-1 where there is none).
    ``stamps_ns`` must be sorted."""
    return np.searchsorted(stamps_ns, times_ns, side="right") - 1


def align(streams: Sequence[Stream], fps: float) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """The grid (ns) and, per stream, the as-of index of each grid time (see the module)."""
    if not fps > 0:
        raise ValueError(f"align: fps must be > 0, got {fps}")
    empty = [s.name for s in streams if s.stamps_ns.size == 0]
    if empty:
        raise ValueError(f"no messages on {empty}")
    start = max(int(s.stamps_ns[0]) for s in streams)
    end = min(int(s.stamps_ns[-1]) for s in streams)
    if end < start:
        raise ValueError("the streams do not overlap in time: "
                         + ", ".join(f"{s.name} {s.stamps_ns[0] * 1e-9:.3f}-"
                                     f"{s.stamps_ns[-1] * 1e-9:.3f} s" for s in streams))
    period_ns = 1e9 / fps
    count = int(np.floor((end - start) / period_ns + 1e-9)) + 1
    times = start + np.round(np.arange(count) * period_ns).astype(np.int64)
    return times, {s.name: asof_indices(s.stamps_ns, times) for s in streams}


def _joint_stream(reader: BagReader, topic: str, joints: Sequence[str]) -> Tuple[Stream, int]:
    """A JointState topic as positions in ``joints`` order (by name); messages missing a
    joint are skipped and counted."""
    stamps, rows, skipped = [], [], 0
    for _, _, msg in reader.messages([topic]):
        index = {n: i for i, n in enumerate(msg.name)}
        if not all(j in index for j in joints) or len(msg.position) != len(msg.name):
            skipped += 1
            continue
        stamps.append(header_stamp_ns(msg))
        rows.append([float(msg.position[index[j]]) for j in joints])
    return Stream(topic, np.asarray(stamps, dtype=np.int64),
                  np.asarray(rows, dtype=np.float64).reshape(-1, len(joints))), skipped


def _image_stream(reader: BagReader, topic: str) -> Stream:
    stamps, frames = [], []
    for _, _, msg in reader.messages([topic]):
        stamps.append(header_stamp_ns(msg))
        frames.append(bytes(msg.data))
    return Stream(topic, np.asarray(stamps, dtype=np.int64), frames)


@dataclass
class Converted:
    episode: Episode
    info: DatasetInfo
    #: Per stream, the stamps (ns) the samples used, and the grid: what a test checks.
    used_stamps_ns: Dict[str, np.ndarray]
    times_ns: np.ndarray
    skipped_messages: int


def bag_to_episode(bag: PathLike, fps: float, action_from: str = "command") -> Converted:
    """One take as an :class:`Episode` of embodiment ``rm75_bimanual`` (the contract's arms,
    left then right) with its cameras. :class:`ConversionError` says what is wrong with it."""
    if action_from not in ACTION_FROM:
        raise ValueError(f"action_from: {action_from!r} is not one of {ACTION_FROM}")
    try:
        with BagReader(bag) as reader:
            contract = reader.info.get("contract")
            if not isinstance(contract, dict) or not isinstance(contract.get("streams"), dict):
                raise ConversionError(bag, "episode.yaml has no robot contract (contract.streams): "
                                           "not a take of this recorder")
            streams = contract["streams"]

            def by_role(role: str) -> Dict[str, Tuple[str, Dict[str, Any]]]:
                return {s.get("source", ""): (topic, s) for topic, s in streams.items()
                        if s.get("role") == role}

            states, commands, images = by_role("state"), by_role("command"), by_role("image")
            arms = sorted(states, key=lambda side: ("left", "right").index(side)
                          if side in ("left", "right") else 2)
            joint_names = tuple(j for side in arms for j in streams[states[side][0]]["joints"])
            embodiment = "rm75_bimanual"
            if joint_names != default_joint_names(embodiment):
                raise ConversionError(bag, f"the contract's arms {arms} have joints "
                                           f"{list(joint_names)}, not the {embodiment} layout")
            skipped = 0
            state_streams, action_streams = [], []
            for side in arms:
                topic, s = states[side]
                stream, n = _joint_stream(reader, topic, s["joints"])
                state_streams.append(stream)
                skipped += n
                if action_from == "command":
                    if side not in commands:
                        raise ConversionError(bag, f"no command stream for the {side} arm "
                                                   "(kinesthetic takes: action_from='state')")
                    ctopic, cs = commands[side]
                    cstream, n = _joint_stream(reader, ctopic, cs["joints"])
                    action_streams.append(cstream)
                    skipped += n
            cameras = sorted(images)
            image_streams = [_image_stream(reader, images[c][0]) for c in cameras]
            task = str(reader.info.get("task", ""))
            extra = {"bag": Path(bag).name, "success": reader.info.get("success"),
                     "operator": reader.info.get("operator", ""),
                     "audit": (reader.info.get("audit") or {}).get("verdict"),
                     "status": reader.info.get("status")}
    except ConversionError:
        raise
    except BagError as e:
        raise ConversionError(bag, e.message) from None

    everything = [*state_streams, *action_streams, *image_streams]
    try:
        times, index = align(everything, fps)
    except ValueError as e:
        raise ConversionError(bag, str(e)) from None
    state = np.concatenate([s.values[index[s.name]] for s in state_streams], axis=1)
    action = (np.concatenate([s.values[index[s.name]] for s in action_streams], axis=1)
              if action_from == "command" else state.copy())
    frames: Dict[str, np.ndarray] = {}
    sizes: Dict[str, Tuple[int, int]] = {}
    for cam, stream in zip(cameras, image_streams):
        decoded = {}
        for i in np.unique(index[stream.name]):
            rgb = decode_jpeg(stream.values[i])
            if rgb is None:
                raise ConversionError(bag, f"{stream.name}: frame stamped "
                                           f"{stream.stamps_ns[i]} ns is not a JPEG")
            decoded[int(i)] = rgb
        shapes = {f.shape for f in decoded.values()}
        if len(shapes) != 1:
            raise ConversionError(bag, f"{stream.name}: frames of several sizes {sorted(shapes)}")
        frames[cam] = np.stack([decoded[int(i)] for i in index[stream.name]])
        sizes[cam] = frames[cam].shape[1:3]
    used = {s.name: s.stamps_ns[index[s.name]] for s in everything}
    try:
        info = DatasetInfo(embodiment, fps, joint_names, sizes)
        episode = Episode(task, state, action, (times - times[0]) * 1e-9, frames, extra)
    except EpisodeFormatError as e:
        raise ConversionError(bag, str(e)) from None
    return Converted(episode, info, used, times, skipped)


@dataclass
class ConversionReport:
    written: List[Tuple[str, Path]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)


def convert_bags(bags: Sequence[PathLike], out: PathLike, *, fps: float = 10.0,
                 action_from: str = "command", include_rejected: bool = False,
                 progress: bool = False) -> ConversionReport:
    """Convert ``bags`` (in order) into the data set at ``out`` (created, or appended to if it
    has the same layout), then write its statistics. Bad bags are reported, not fatal."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no TMonitor thread
    report = ConversionReport()
    writer: Optional[EpisodeWriter] = None
    for bag in tqdm(list(bags), desc="converting", unit="bag", disable=not progress):
        name = str(bag)
        try:
            with BagReader(bag) as reader:
                verdict = (reader.info.get("audit") or {}).get("verdict")
            if verdict == "rejected" and not include_rejected:
                report.skipped.append((name, "rejected by the capture audit"))
                continue
            converted = bag_to_episode(bag, fps, action_from)
            if writer is None:
                writer = EpisodeWriter(out, converted.info)
            report.written.append((name, writer.write(converted.episode)))
        except (BagError, EpisodeFormatError) as e:  # ConversionError is a BagError
            report.failed.append((name, str(e)))
    if report.written:
        stats = compute_stats(out)
        from safetensors.numpy import save_file

        save_file(stats_to_tensors({writer.info.embodiment: stats}), str(Path(out) / STATS_FILE))
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ate_core.data.convert",
        description="Convert recorded takes (episode bags) into a training data set.")
    parser.add_argument("bags", nargs="+", help="bag folders (episode_NNNNNN), or folders of them")
    parser.add_argument("--out", required=True, help="data set folder (created or appended to)")
    parser.add_argument("--fps", type=float, default=10.0, help="sample rate of the data set, Hz")
    parser.add_argument("--action-from", choices=ACTION_FROM, default="command",
                        help="the arms' commands (default) or, for kinesthetic takes, their state")
    parser.add_argument("--include-rejected", action="store_true",
                        help="also convert takes the capture audit rejected")
    args = parser.parse_args(argv)
    bags: List[Path] = []
    for p in map(Path, args.bags):
        if p.is_dir() and not (p / "metadata.yaml").exists() and not (p / "episode.yaml").exists():
            bags += sorted(q for q in p.iterdir() if q.is_dir() and q.name.startswith("episode_"))
        else:
            bags.append(p)
    report = convert_bags(bags, args.out, fps=args.fps, action_from=args.action_from,
                          include_rejected=args.include_rejected, progress=True)
    for name, path in report.written:
        print(f"{name} -> {path}")
    for name, why in report.skipped:
        print(f"skipped {name}: {why}")
    for name, why in report.failed:
        print(f"error: {why}")
    print(f"{len(report.written)} converted, {len(report.skipped)} skipped, "
          f"{len(report.failed)} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
