"""The episode format on disk: round trips, atomic writes, and a clear error for each defect."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ate_core.data import episode as episode_mod
from ate_core.data.episode import (DatasetInfo, Episode, EpisodeFormatError, EpisodeReader,
                                   EpisodeWriter, create_dataset, default_joint_names,
                                   episode_dir, list_episodes, read_info, write_episode)

CAM_SIZE = (24, 32)


def make_info(cameras=("head", "wrist"), embodiment="rm65_single") -> DatasetInfo:
    return DatasetInfo(embodiment=embodiment, fps=30.0,
                       joint_names=default_joint_names(embodiment),
                       cameras={c: CAM_SIZE for c in cameras})


def make_episode(length=5, cameras=("head", "wrist"), dim=7, task="pick the cube") -> Episode:
    t = np.arange(length, dtype=np.float32)[:, None]
    j = np.arange(dim, dtype=np.float32)[None, :]
    frames = {}
    for k, cam in enumerate(cameras):
        f = np.zeros((length,) + CAM_SIZE + (3,), dtype=np.uint8)
        for s in range(length):  # smooth content: JPEG keeps it within a few levels
            f[s, :, :, 0] = 30 + 40 * s
            f[s, :, :, 1] = 200 - 30 * s
            f[s, :, :, 2] = 60 + 50 * k
        frames[cam] = f
    return Episode(task=task, state=0.1 * t + 0.01 * j, action=0.1 * t + 0.01 * j + 0.05,
                   timestamp_s=1000.0 + np.arange(length) / 30.0, frames=frames,
                   extra={"operator": "test"})


@pytest.fixture
def root(tmp_path) -> Path:
    write_episode(tmp_path, 0, make_episode(), make_info())
    return tmp_path


def data_path(root: Path, index: int = 0) -> Path:
    return episode_dir(root, index) / "data.safetensors"


def rewrite_data(root: Path, **changes) -> None:
    arrays = load_file(str(data_path(root)))
    arrays.update(changes)
    save_file(arrays, str(data_path(root)))


# ----------------------------------------------------------------------------------- round trip


def test_write_then_read_gives_arrays_bit_exact_and_frames_within_jpeg_tolerance(tmp_path):
    ep = make_episode()
    write_episode(tmp_path, 3, ep, make_info())
    r = EpisodeReader(tmp_path, 3)
    assert r.task == "pick the cube" and r.length == 5 and r.extra == {"operator": "test"}
    for name in ("state", "action", "timestamp_s"):
        got, want = getattr(r, name), getattr(ep, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    loaded = r.load()
    for cam in ("head", "wrist"):
        assert loaded.frames[cam].dtype == np.uint8
        assert loaded.frames[cam].shape == (5,) + CAM_SIZE + (3,)
        diff = np.abs(loaded.frames[cam].astype(int) - ep.frames[cam].astype(int))
        assert diff.max() <= 4


def test_frames_come_back_rgb_not_bgr(tmp_path):
    ep = make_episode(length=2)
    red = np.zeros((2,) + CAM_SIZE + (3,), dtype=np.uint8)
    red[..., 0] = 255
    ep = Episode(ep.task, ep.state, ep.action, ep.timestamp_s, {"head": red, "wrist": red})
    write_episode(tmp_path, 0, ep, make_info())
    r = EpisodeReader(tmp_path, 0)
    px = r.frame("head", 1)[10, 10]
    assert px[0] > 240 and px[1] < 15 and px[2] < 15
    # The stored file is a standard JPEG: any decoder (here OpenCV's, which returns BGR)
    # sees a red image.
    bgr = cv2.imdecode(np.frombuffer(r.jpeg("head", 1), np.uint8), cv2.IMREAD_COLOR)
    assert bgr[10, 10, 2] > 240 and bgr[10, 10, 0] < 15


def test_one_frame_is_decoded_on_demand_and_matches_the_full_load(root):
    r = EpisodeReader(root, 0)
    np.testing.assert_array_equal(r.frame("wrist", 3), r.load().frames["wrist"][3])
    assert r.jpeg("wrist", 3)[:2] == b"\xff\xd8"  # the stored bytes are a JPEG file


def test_read_info_returns_what_create_dataset_wrote(tmp_path):
    info = make_info()
    create_dataset(tmp_path, info)
    assert read_info(tmp_path) == info
    raw = json.loads((tmp_path / "info.json").read_text())
    assert raw["format"] == "ate_episodes" and raw["version"] == 1
    assert raw["cameras"] == {"head": [24, 32], "wrist": [24, 32]}


def test_rm75_bimanual_joint_order_is_left_arm_gripper_then_right():
    names = default_joint_names("rm75_bimanual")
    assert names[:8] == tuple(f"left_joint{i}" for i in range(1, 8)) + ("left_gripper",)
    assert names[8:] == tuple(f"right_joint{i}" for i in range(1, 8)) + ("right_gripper",)


def test_list_episodes_is_sorted_and_ignores_temporary_directories(root):
    write_episode(root, 12, make_episode(), make_info())
    (root / "episodes" / ".tmp-episode_000004-abc").mkdir()
    assert list_episodes(root) == [0, 12]


def test_writer_numbers_new_episodes_after_the_existing_ones(root):
    writer = EpisodeWriter(root, make_info())
    assert writer.write(make_episode()).name == "episode_000001"
    assert writer.write(make_episode()).name == "episode_000002"


def test_loading_never_unpickles(root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    EpisodeReader(root, 0).load()


# ------------------------------------------------------------------------------ safe writing


def test_a_write_failing_midway_leaves_no_episode_behind(tmp_path, monkeypatch):
    create_dataset(tmp_path, make_info())
    real = episode_mod.encode_jpeg
    calls = []

    def fail_on_the_seventh_frame(rgb, quality=90):
        calls.append(1)
        if len(calls) == 7:  # the second camera, after data and the first camera are on disk
            raise RuntimeError("disk full")
        return real(rgb, quality)

    monkeypatch.setattr(episode_mod, "encode_jpeg", fail_on_the_seventh_frame)
    with pytest.raises(RuntimeError, match="disk full"):
        write_episode(tmp_path, 0, make_episode(), make_info())
    assert list(Path(tmp_path, "episodes").iterdir()) == []
    assert list_episodes(tmp_path) == []


def test_an_existing_episode_is_never_overwritten(root):
    before = data_path(root).read_bytes()
    other = make_episode(length=3, task="something else")
    with pytest.raises(FileExistsError, match="episode_000000"):
        write_episode(root, 0, other, make_info())
    assert data_path(root).read_bytes() == before
    assert EpisodeReader(root, 0).task == "pick the cube"
    assert [p.name for p in (root / "episodes").iterdir()] == ["episode_000000"]


def test_create_dataset_refuses_a_different_info_and_accepts_the_same(tmp_path):
    create_dataset(tmp_path, make_info())
    create_dataset(tmp_path, make_info())  # idempotent
    with pytest.raises(EpisodeFormatError, match="info.json.*different"):
        create_dataset(tmp_path, make_info(cameras=("head",)))
    assert read_info(tmp_path) == make_info()


def test_writing_an_episode_that_does_not_fit_the_dataset_is_refused(tmp_path):
    with pytest.raises(EpisodeFormatError, match="cameras"):
        write_episode(tmp_path, 0, make_episode(cameras=("head",)), make_info())
    with pytest.raises(EpisodeFormatError, match="state: 16 dims"):
        write_episode(tmp_path, 1, make_episode(dim=16), make_info())
    assert list_episodes(tmp_path) == []


# ------------------------------------------------------------------------------ format errors


def test_missing_info_json_is_named(tmp_path):
    with pytest.raises(EpisodeFormatError, match=r"info\.json: missing dataset info"):
        read_info(tmp_path)


@pytest.mark.parametrize("field,value,message", [
    ("format", "lerobot", "format: 'lerobot'"),
    ("version", 2, "version: 2 is not supported"),
    ("embodiment", "ur5", "embodiment: .*unknown embodiment 'ur5'"),
    ("fps", -1, "fps: expected a positive number"),
])
def test_bad_info_fields_are_named(root, field, value, message):
    raw = json.loads((root / "info.json").read_text())
    raw[field] = value
    (root / "info.json").write_text(json.dumps(raw))
    with pytest.raises(EpisodeFormatError, match=r"info\.json: " + message):
        read_info(root)


def test_joint_count_must_match_the_embodiment():
    with pytest.raises(EpisodeFormatError, match="joint_names: 6 names, but embodiment "
                                                 "'rm65_single' has 7 action dims"):
        DatasetInfo(embodiment="rm65_single", fps=30.0,
                    joint_names=[f"joint{i}" for i in range(1, 7)], cameras={})


def test_data_with_a_different_joint_count_than_info_is_named(root):
    rewrite_data(root, state=np.zeros((5, 6), np.float32), action=np.zeros((5, 6), np.float32))
    with pytest.raises(EpisodeFormatError, match=r"data\.safetensors: state: 6 dims, but the "
                                                 r"dataset has 7"):
        EpisodeReader(root, 0)


def test_nan_action_is_named_with_its_index(root):
    action = load_file(str(data_path(root)))["action"]
    action[2, 4] = np.nan
    rewrite_data(root, action=action)
    with pytest.raises(EpisodeFormatError, match=r"data\.safetensors: action: non-finite value "
                                                 r"at index \[2, 4\]"):
        EpisodeReader(root, 0)


def test_nan_state_is_refused_before_anything_is_written():
    ep = make_episode()
    state = ep.state.copy()
    state[1, 0] = np.inf
    with pytest.raises(EpisodeFormatError, match=r"state: non-finite value at index \[1, 0\]"):
        Episode(ep.task, state, ep.action, ep.timestamp_s)


def test_timestamps_must_strictly_increase(root):
    ts = load_file(str(data_path(root)))["timestamp_s"]
    ts[3] = ts[2]
    rewrite_data(root, timestamp_s=ts)
    with pytest.raises(EpisodeFormatError, match=r"timestamp_s: not strictly increasing at step 3"):
        EpisodeReader(root, 0)


def test_array_length_mismatch_is_named(root):
    rewrite_data(root, action=np.zeros((4, 7), np.float32))
    with pytest.raises(EpisodeFormatError, match=r"action: shape \[4, 7\] differs from state"):
        EpisodeReader(root, 0)


def test_meta_length_mismatch_is_named(root):
    meta = episode_dir(root, 0) / "meta.json"
    meta.write_text(json.dumps({"task": "pick the cube", "length": 6}))
    with pytest.raises(EpisodeFormatError, match=r"data\.safetensors: state: 5 steps, but "
                                                 r"meta\.json says length 6"):
        EpisodeReader(root, 0)


@pytest.mark.parametrize("name,what", [("meta.json", "missing episode meta"),
                                       ("data.safetensors", "missing episode data"),
                                       ("wrist.safetensors", "missing camera file for 'wrist'")])
def test_missing_episode_files_are_named(root, name, what):
    (episode_dir(root, 0) / name).unlink()
    with pytest.raises(EpisodeFormatError, match=rf"episode_000000/{name}: {what}"):
        EpisodeReader(root, 0)


@pytest.mark.parametrize("name", ["data.safetensors", "head.safetensors"])
def test_truncated_safetensors_file_is_named(root, name):
    path = episode_dir(root, 0) / name
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(EpisodeFormatError, match=rf"{name}: unreadable safetensors file"):
        EpisodeReader(root, 0)


def test_camera_offsets_that_do_not_cover_the_frames_are_named(root):
    path = episode_dir(root, 0) / "head.safetensors"
    arrays = load_file(str(path))
    arrays["offsets"] = arrays["offsets"][:-1]
    save_file(arrays, str(path))
    with pytest.raises(EpisodeFormatError,
                       match=r"head\.safetensors: offsets: expected int64 \[6\]"):
        EpisodeReader(root, 0)


def test_corrupt_jpeg_names_camera_and_frame(root):
    path = episode_dir(root, 0) / "wrist.safetensors"
    arrays = load_file(str(path))
    start, stop = arrays["offsets"][2], arrays["offsets"][3]
    arrays["jpeg"][start:stop] = 0x55  # frame 2 is no longer a JPEG
    save_file(arrays, str(path))
    r = EpisodeReader(root, 0)
    r.frame("wrist", 1)  # its neighbours are intact
    with pytest.raises(EpisodeFormatError, match=r"wrist\.safetensors: camera 'wrist' frame 2: "
                                                 r"corrupt JPEG"):
        r.frame("wrist", 2)


def test_frame_size_not_matching_info_is_named(root):
    raw = json.loads((root / "info.json").read_text())
    raw["cameras"]["head"] = [48, 64]
    (root / "info.json").write_text(json.dumps(raw))
    with pytest.raises(EpisodeFormatError, match=r"camera 'head' frame 0: size \[24, 32\], the "
                                                 r"dataset says \[48, 64\]"):
        EpisodeReader(root, 0).frame("head", 0)
