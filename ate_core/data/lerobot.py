"""Export a data set to LeRobotDataset v3.0, the layout LeRobot's loader and the Hub read.

::

    <out>/meta/info.json                                   features, fps, paths, totals
    <out>/meta/stats.json                                  per feature: min max mean std count q01..q99
    <out>/meta/tasks.parquet                               task (pandas index) -> task_index
    <out>/meta/episodes/chunk-000/file-000.parquet         one row per episode: length, where its
                                                           rows and videos are, tasks, ate/success
    <out>/data/chunk-CCC/file-FFF.parquet                  one file per episode: the per-frame columns
    <out>/videos/observation.images.<cam>/chunk-CCC/file-FFF.mp4   one file per episode and camera

Per frame: ``observation.state`` and ``action`` (float32 [D], the joint names as ``names``),
``observation.environment_state`` where the data set has one, and LeRobot's ``timestamp``
(``frame_index / fps``), ``frame_index``, ``episode_index``, ``index``, ``task_index``. Frames
go into one MP4 per episode and camera (LeRobot also accepts several episodes per file; one each
keeps an episode's frames together and ``from_timestamp`` at 0), encoded with PyAV as LeRobot
does: AV1 (``libsvtav1``, its default) or H.264, yuv420p, a keyframe every ``gop`` frames, at
exactly ``fps`` so frame i sits at ``i / fps``. Failed takes are exported too, marked in the
episodes table (``ate/success``), as LeRobot's own converters keep them.

Facts this follows were checked against LeRobot's loader (``LeRobotDataset``): the data parquet
may hold no column it does not declare; the tasks table must carry pandas' index metadata or
the task comes back as its number; video timestamps must match to 1e-4 s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ate_core.data.episode import EpisodeReader, list_episodes, read_info
from ate_core.io.durable import atomic_dir

__all__ = ["CODEBASE_VERSION", "export_lerobot_v3", "LeRobotExportError", "VIDEO_CODECS",
           "DATA_PATH", "VIDEO_PATH", "main"]

PathLike = Union[str, "os.PathLike[str]"]
CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CHUNKS_SIZE = 1000
#: Encoder name -> the codec name a decoder reports (info.json's video.codec).
VIDEO_CODECS = {"libsvtav1": "av1", "libx264": "h264"}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
#: Frames per episode sampled for image statistics (LeRobot samples as well).
IMAGE_STAT_FRAMES = 20


class LeRobotExportError(ValueError):
    """A data set that cannot be written as LeRobot v3.0; says why."""


def _numeric_stats(x: np.ndarray) -> Dict[str, List[Any]]:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out: Dict[str, List[Any]] = {"min": x.min(0).tolist(), "max": x.max(0).tolist(),
                                 "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                                 "count": [int(len(x))]}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=0).tolist()
    return out


def _image_stats(frames: np.ndarray) -> Dict[str, List[Any]]:
    """Per channel, scaled to [0, 1], shaped [3][1][1] as LeRobot stores them."""
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    out: Dict[str, List[Any]] = {}
    for key, values in (("min", pixels.min(0)), ("max", pixels.max(0)),
                        ("mean", pixels.mean(0)), ("std", pixels.std(0)),
                        *((f"q{int(round(q * 100)):02d}", np.quantile(pixels, q, axis=0))
                          for q in QUANTILES)):
        out[key] = [[[float(v)]] for v in values]
    out["count"] = [int(frames.shape[0])]
    return out


def _encode_video(frames: np.ndarray, path: Path, fps: int, codec: str, crf: int,
                  gop: int) -> None:
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's banner on every file: errors only
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise LeRobotExportError(f"{path}: yuv420p needs even frame sizes, got {w}x{h}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop)}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _tasks_table(tasks: Sequence[str]) -> Any:
    """tasks.parquet as pandas writes a DataFrame indexed by ``task`` (LeRobot reads it with
    pandas and looks tasks up by that index); written without pandas."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3"}
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      "task": pa.array(list(tasks), pa.string())})
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _vector(values: np.ndarray) -> Any:
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def export_lerobot_v3(dataset: PathLike, out: PathLike, *, robot_type: str = "realman_rm75_bimanual",
                      codec: str = "libsvtav1", crf: int = 30, gop: int = 2,
                      progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write the data set at ``dataset`` as LeRobotDataset v3.0 at ``out`` (a new folder,
    written beside and renamed into place when complete). Returns ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if codec not in VIDEO_CODECS:
        raise LeRobotExportError(f"codec {codec!r}: expected one of {sorted(VIDEO_CODECS)}")
    out = Path(out)
    if out.exists():
        raise LeRobotExportError(f"{out} exists already; export into a new folder")
    info = read_info(dataset)
    fps = int(round(info.fps))
    if abs(info.fps - fps) > 1e-9:
        raise LeRobotExportError(f"{dataset}: fps {info.fps:g} is not a whole number, which "
                                 "LeRobot v3.0 requires")
    episodes = list_episodes(dataset)
    if not episodes:
        raise LeRobotExportError(f"{dataset}: no episodes")
    names = list(info.joint_names)
    video_keys = {cam: f"observation.images.{cam}" for cam in info.cameras}

    tasks: List[str] = []
    rows: List[Dict[str, Any]] = []
    columns: Dict[str, List[np.ndarray]] = {"state": [], "action": [], "env": [], "ts": [],
                                            "fi": []}
    image_samples: Dict[str, List[np.ndarray]] = {cam: [] for cam in info.cameras}
    first = 0
    with atomic_dir(out) as tmp:
        for n, e in enumerate(episodes):
            reader = EpisodeReader(dataset, e, info=info)
            length = reader.length
            if reader.task not in tasks:
                tasks.append(reader.task)
            chunk, file = divmod(n, CHUNKS_SIZE)
            frame_index = np.arange(length, dtype=np.int64)
            timestamp = (frame_index / fps).astype(np.float32)
            data = {"observation.state": _vector(reader.state), "action": _vector(reader.action)}
            if info.env_dim:
                data["observation.environment_state"] = _vector(reader.env_state)
            data.update({
                "timestamp": pa.array(timestamp, pa.float32()),
                "frame_index": pa.array(frame_index, pa.int64()),
                "episode_index": pa.array(np.full(length, n, np.int64), pa.int64()),
                "index": pa.array(first + frame_index, pa.int64()),
                "task_index": pa.array(np.full(length, tasks.index(reader.task), np.int64),
                                       pa.int64())})
            path = tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(data), path)
            row: Dict[str, Any] = {
                "episode_index": n, "tasks": [reader.task], "length": length,
                "data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": first, "dataset_to_index": first + length}
            for cam, key in video_keys.items():
                frames = reader.frames(cam)
                _encode_video(frames, tmp / VIDEO_PATH.format(video_key=key, chunk_index=chunk,
                                                              file_index=file),
                              fps, codec, crf, gop)
                row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                            f"videos/{key}/from_timestamp": 0.0,
                            f"videos/{key}/to_timestamp": length / fps})
                pick = np.linspace(0, length - 1, min(length, IMAGE_STAT_FRAMES)).round().astype(int)
                image_samples[cam].append(frames[np.unique(pick)])
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        "ate/success": reader.extra.get("success"),
                        "ate/source_episode": e})
            rows.append(row)
            columns["state"].append(reader.state)
            columns["action"].append(reader.action)
            if info.env_dim:
                columns["env"].append(reader.env_state)
            columns["ts"].append(timestamp)
            columns["fi"].append(frame_index)
            first += length
            if progress is not None:
                progress(n + 1, len(episodes))

        episodes_table = pa.table({
            key: pa.array([r[key] for r in rows],
                          pa.list_(pa.string()) if key == "tasks"
                          else pa.bool_() if key == "ate/success"
                          else pa.float64() if key.endswith("_timestamp") else pa.int64())
            for key in rows[0]})
        (tmp / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes_table, tmp / EPISODES_PATH)
        pq.write_table(_tasks_table(tasks), tmp / "meta" / "tasks.parquet")

        vector = {"dtype": "float32", "shape": [len(names)], "names": names}
        features: Dict[str, Any] = {"observation.state": vector, "action": dict(vector)}
        if info.env_dim:
            features["observation.environment_state"] = {
                "dtype": "float32", "shape": [info.env_dim], "names": list(info.env_state_names)}
        for cam, key in video_keys.items():
            h, w = info.cameras[cam]
            features[key] = {"dtype": "video", "shape": [h, w, 3],
                             "names": ["height", "width", "channels"],
                             "info": {"video.height": h, "video.width": w,
                                      "video.codec": VIDEO_CODECS[codec],
                                      "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                      "video.fps": fps, "video.channels": 3, "video.g": gop,
                                      "video.crf": crf, "has_audio": False}}
        for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"),
                           ("episode_index", "int64"), ("index", "int64"),
                           ("task_index", "int64")):
            features[key] = {"dtype": dtype, "shape": [1], "names": None}
        meta = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
                "total_episodes": len(rows), "total_frames": first, "total_tasks": len(tasks),
                "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100,
                "video_files_size_in_mb": 200, "fps": fps,
                "splits": {"train": f"0:{len(rows)}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if video_keys else None, "features": features}
        (tmp / "meta" / "info.json").write_text(json.dumps(meta, indent=4))

        stats: Dict[str, Any] = {
            "observation.state": _numeric_stats(np.concatenate(columns["state"])),
            "action": _numeric_stats(np.concatenate(columns["action"])),
            "timestamp": _numeric_stats(np.concatenate(columns["ts"])),
            "frame_index": _numeric_stats(np.concatenate(columns["fi"])),
            "episode_index": _numeric_stats(np.concatenate(
                [np.full(r["length"], r["episode_index"]) for r in rows])),
            "index": _numeric_stats(np.arange(first)),
            "task_index": _numeric_stats(np.concatenate(
                [np.full(r["length"], tasks.index(r["tasks"][0])) for r in rows]))}
        if info.env_dim:
            stats["observation.environment_state"] = _numeric_stats(np.concatenate(columns["env"]))
        for cam, key in video_keys.items():
            stats[key] = _image_stats(np.concatenate(image_samples[cam]))
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m ate_core.data.lerobot",
                                     description="Export a data set as LeRobotDataset v3.0.")
    parser.add_argument("dataset", help="data set folder (ate_episodes)")
    parser.add_argument("--out", required=True, help="new folder for the LeRobot data set")
    parser.add_argument("--robot-type", default="realman_rm75_bimanual")
    parser.add_argument("--codec", choices=sorted(VIDEO_CODECS), default="libsvtav1",
                        help="video encoder: AV1 (LeRobot's default) or H.264")
    parser.add_argument("--crf", type=int, default=30)
    args = parser.parse_args(argv)
    tqdm.monitor_interval = 0
    bar = tqdm(desc="exporting", unit="episode")

    def step(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        path = export_lerobot_v3(args.dataset, args.out, robot_type=args.robot_type,
                                 codec=args.codec, crf=args.crf, progress=step)
    except (LeRobotExportError, ValueError, OSError) as e:
        bar.close()
        print(f"error: {e}")
        return 1
    bar.close()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
