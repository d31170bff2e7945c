"""LeRobotDataset v3.0 export: the layout, the tables as pyarrow reads them, and videos that
decode to exactly one frame per row at LeRobot's timestamps."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from ate_core.data.episode import EpisodeReader
from ate_core.data.lerobot import LeRobotExportError, export_lerobot_v3
from ate_core.data.synthetic import generate_synthetic_dataset

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "data"
    generate_synthetic_dataset(root, n_episodes=3, length=14, cameras=("head", "left_wrist"),
                               image_size=(48, 64))
    return root


@pytest.mark.parametrize("codec,name", [("libsvtav1", "av1"), ("libx264", "h264")])
def test_the_export_follows_the_v3_layout_and_every_video_has_one_frame_per_row(dataset, tmp_path,
                                                                                codec, name):
    out = export_lerobot_v3(dataset, tmp_path / "lerobot", codec=codec)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["total_episodes"] == 3 and info["total_frames"] == 42
    feats = info["features"]
    assert feats["observation.state"]["shape"] == [16]
    assert feats["observation.state"]["names"][0] == "left_joint1"
    assert feats["observation.images.head"]["shape"] == [48, 64, 3]
    assert feats["observation.images.head"]["info"]["video.codec"] == name
    video_keys = [k for k, f in feats.items() if f["dtype"] == "video"]

    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == [0, 1, 2]
    index = 0
    for ep in episodes:
        path = out / info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                              file_index=ep["data/file_index"])
        table = pq.read_table(path)
        # Exactly the declared non-video features, nothing else (LeRobot refuses extras).
        assert set(table.column_names) == {k for k in feats if k not in video_keys}
        rows = table.to_pydict()
        n = ep["length"]
        assert rows["frame_index"] == list(range(n))
        assert rows["index"] == list(range(index, index + n))
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (index, index + n)
        np.testing.assert_allclose(rows["timestamp"], np.arange(n, dtype=np.float32) / 10)
        source = EpisodeReader(dataset, ep["ate/source_episode"])
        np.testing.assert_array_equal(np.array(rows["action"], np.float32), source.action)
        index += n
        for key in video_keys:
            video = out / info["video_path"].format(video_key=key,
                                                    chunk_index=ep[f"videos/{key}/chunk_index"],
                                                    file_index=ep[f"videos/{key}/file_index"])
            with av.open(str(video)) as container:
                frames = list(container.decode(video=0))
            assert len(frames) == n
            pts = np.array([f.time for f in frames]) + ep[f"videos/{key}/from_timestamp"]
            np.testing.assert_allclose(pts, np.arange(n) / 10, atol=1e-4)
            assert ep[f"videos/{key}/to_timestamp"] == pytest.approx(n / 10)
            # The picture is the episode's (lossy, so close, not equal).
            first = frames[0].to_ndarray(format="rgb24").astype(int)
            assert np.abs(first - source.frame(key.split(".")[-1], 0).astype(int)).mean() < 12

    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "task"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((out / "meta/stats.json").read_text())
    assert len(stats["action"]["mean"]) == 16 and stats["action"]["count"] == [42]
    assert np.array(stats["observation.images.head"]["mean"]).shape == (3, 1, 1)
    assert set(stats["action"]) >= {"min", "max", "mean", "std", "q01", "q99"}


def test_an_existing_folder_is_never_written_over_and_the_cli_says_why(dataset, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(LeRobotExportError, match="exists already"):
        export_lerobot_v3(dataset, tmp_path / "taken")
    run = subprocess.run([sys.executable, "-m", "ate_core.data.lerobot", str(dataset), "--out",
                          str(tmp_path / "taken")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "exists already" in run.stdout
