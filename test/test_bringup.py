"""The main job (`./run.sh` -> ate_bringup) brings the simulated robot up and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, free_port, free_udp_port, next_domain_id


def _config_on_free_ports(tmp_path: Path) -> Path:
    """The shipped config with the sim endpoints moved to free ports (tests run side by side)."""
    data = yaml.safe_load((REPO / "config/bimanual.yaml").read_text())
    for side in ("left", "right"):
        data["sim"]["arms"][side].update(tcp_port=free_port(),
                                         udp_port=free_udp_port())
    path = tmp_path / "bimanual.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env() -> dict:
    return {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def test_run_script_brings_up_the_emulated_robot_and_reports(tmp_path):
    config = _config_on_free_ports(tmp_path)
    result = subprocess.run(
        [str(REPO / "run.sh"), "--config", str(config), "--duration", "2",
         "--domain-id", str(next_domain_id())],
        capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for side, ip in (("left", "127.0.0.1"), ("right", "127.0.0.2")):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"controller {side}"))
        assert f"RM75-B emulated at {ip}:" in line
        assert int(re.search(r"(\d+) packets sent", line).group(1)) > 200  # 200 Hz push for 2 s
    assert "/joint_state_aggregator" in out and "/left_arm/arm_driver" in out
    for side in ("left", "right"):
        assert re.search(rf"arm driver {side}\s+link ready", out), out
        rate = float(re.search(rf"/{side}_arm/joint_states\s+([\d.]+) Hz", out).group(1))
        assert rate > 100, out  # 200 Hz push; the window includes start-up
    assert re.search(r"left\s+TCP at \(\+0\.315, \+0\.300, \+0\.095\) m in base_link, measured", out), out
    for camera in ("head", "left_wrist", "right_wrist"):  # simulated cameras at 30 Hz
        assert float(re.search(rf"/cameras/{camera}/camera_info\s+([\d.]+) Hz", out).group(1)) > 15, out
    assert re.search(r"supervisor idle \(not engaged\)", out), out  # nothing moves until engaged
    assert float(re.search(r"/left_arm/command\s+([\d.]+) Hz", out).group(1)) == 0.0, out


def test_bringup_rejects_a_bad_config_with_a_clear_error(tmp_path):
    data = yaml.safe_load((REPO / "config/bimanual.yaml").read_text())
    data["arms"]["left"]["udp_port"] = "eighty"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "ate_ros.bringup",
                             "--config", str(bad), "--duration", "0.1"],
                            capture_output=True, text=True, timeout=60, env=_env())
    assert result.returncode == 2
    assert f"{bad}: arms.left.udp_port: expected an integer, got str 'eighty'" in result.stderr
