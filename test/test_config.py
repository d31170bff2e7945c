"""Typed config: the shipped files load, and every kind of mistake names the file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ate_core.config import ConfigError, flatten, from_flat, replace_in
from ate_core.robot.config import BimanualConfig, load_config

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "bimanual.yaml"


def _write_variant(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(SHIPPED.read_text())
    edit(data)
    path = tmp_path / "bimanual.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, edit) -> str:
    path = _write_variant(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_shipped_config_loads_into_typed_objects():
    cfg = load_config(SHIPPED)
    assert isinstance(cfg, BimanualConfig)
    assert cfg.arms.left.ip == "192.168.1.18"
    assert len(cfg.arms.right.joint_names) == 7
    assert isinstance(cfg.arms.left.home_rad, tuple) and all(isinstance(q, float) for q in cfg.arms.left.home_rad)


def test_bad_ip_is_named_by_file_and_key_path(tmp_path):
    path = _write_variant(tmp_path, lambda d: d["arms"]["left"].update(ip="192.168.1.300"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: arms.left.ip: not an IPv4 address")):
        load_config(path)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    msg = _error(tmp_path, lambda d: d["arms"]["right"].update(ipaddr="192.168.1.19"))
    assert "arms.right.ipaddr: unknown key" in msg and "ip" in msg


def test_unknown_top_level_section_is_rejected(tmp_path):
    msg = _error(tmp_path, lambda d: d.update(camras={}))
    assert ": camras: unknown key" in msg


@pytest.mark.parametrize("key, value, expected", [
    ("tcp_port", "8080", "arms.left.tcp_port: expected an integer, got str '8080'"),
    ("follow", "yes", "arms.left.follow: expected true or false"),
    ("tcp_port", True, "arms.left.tcp_port: expected an integer, got bool"),
    ("control_period_s", [0.01], "arms.left.control_period_s: expected a number, got a list"),
    ("joint_names", "left_joint1", "arms.left.joint_names: expected a list"),
    ("mount", [0, 0, 0], "arms.left.mount: expected a mapping"),
])
def test_wrong_types_are_named(tmp_path, key, value, expected):
    msg = _error(tmp_path, lambda d: d["arms"]["left"].update({key: value}))
    assert expected in msg


def test_wrong_type_inside_a_list_names_the_index(tmp_path):
    def edit(d):
        d["arms"]["left"]["home_rad"][3] = "bent"
    assert "arms.left.home_rad[3]: expected a number" in _error(tmp_path, edit)


def test_wrong_joint_count_is_named(tmp_path):
    msg = _error(tmp_path, lambda d: d["arms"]["left"]["joint_names"].pop())
    assert "arms.left.joint_names: 6 joints given, RM75-B has 7" in msg
    msg = _error(tmp_path, lambda d: d["arms"]["right"]["home_rad"].append(0.0))
    assert "arms.right.home_rad: 8 values given, RM75-B has 7 joints" in msg


def test_joint_count_follows_the_model(tmp_path):
    # Switching the model to the 6-DoF RM65-B makes the 7 shipped joints wrong.
    msg = _error(tmp_path, lambda d: d["arms"]["left"].update(model="RM65-B"))
    assert "arms.left.joint_names: 7 joints given, RM65-B has 6" in msg


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["arms"]["left"].update(tcp_port=70000), "arms.left.tcp_port: 70000 is not a port number"),
    (lambda d: d["arms"]["left"].update(control_period_s=0.5), "arms.left.control_period_s: 0.5 is outside"),
    (lambda d: d["arms"]["left"].update(push_cycle=0), "arms.left.push_cycle: 0 is outside"),
    (lambda d: d["arms"]["left"]["home_rad"].__setitem__(1, 2.5),
     "arms.left.home_rad[1]: 2.5 rad is outside the joint limits"),
    (lambda d: d["arms"]["left"].update(model="RM99"), "arms.left.model: 'RM99' is not one of"),
    (lambda d: d["gripper"].update(max_opening_m=-0.01), "gripper.max_opening_m: -0.01 is outside"),
    (lambda d: d["arms"]["left"].update(follow=True, control_period_s=0.02),
     "arms.left.control_period_s: 0.02 s is too slow for follow: true"),
    (lambda d: d["arms"]["right"].update(udp_port=8089), "arms.right.udp_port: both arms use UDP push port 8089"),
    (lambda d: d["arms"]["right"].update(joint_names=[f"left_joint{i}" for i in range(1, 8)]),
     "arms.right.joint_names: joint names shared with the left arm"),
])
def test_out_of_range_and_inconsistent_values_are_named(tmp_path, edit, expected):
    assert expected in _error(tmp_path, edit)


def test_non_finite_value_is_rejected(tmp_path):
    def edit(d):
        d["arms"]["left"]["mount"]["rpy_rad"][0] = float("nan")
    assert "arms.left.mount.rpy_rad: nan is outside" in _error(tmp_path, edit)


def test_missing_required_key_is_named(tmp_path):
    msg = _error(tmp_path, lambda d: d["arms"]["right"].pop("ip"))
    assert "arms.right.ip: required key is missing" in msg


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("arms:\n  left: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_config(broken)


def test_flat_parameters_round_trip_and_are_validated_like_the_file():
    cfg = load_config(SHIPPED)
    flat = flatten(cfg)
    assert flat["arms.left.ip"] == "192.168.1.18"
    assert isinstance(flat["arms.left.home_rad"], list)
    assert from_flat(BimanualConfig, flat) == cfg
    moved = replace_in(cfg, {"arms.left.ip": "10.0.0.5"})
    assert moved.arms.left.ip == "10.0.0.5" and moved.arms.right == cfg.arms.right
    with pytest.raises(ConfigError, match="parameters: arms.left.ip: not an IPv4 address"):
        replace_in(cfg, {"arms.left.ip": "robot-left"}, source="parameters")
    with pytest.raises(ConfigError, match="arms.left.colour: unknown key"):
        replace_in(cfg, {"arms.left.colour": "red"})


def test_errors_keep_their_message_across_a_process_boundary():
    # A benchmark or data-loader worker's error is pickled to its parent: it must arrive whole,
    # not as a TypeError from the error's own constructor.
    import pickle

    from ate_core.data.bag import BagError
    from ate_core.data.convert import ConversionError
    from ate_core.data.episode import EpisodeFormatError

    for error in (ConfigError("config/bimanual.yaml", "arms.left.ip", "not an IPv4 address"),
                  EpisodeFormatError("info.json", "fps: expected a positive number"),
                  BagError("episode_000001", "has no metadata.yaml"),
                  ConversionError("episode_000002", "no robot contract")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert back.message == error.message
