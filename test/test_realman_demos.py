"""scripts/realman_demos.py: RealMan's demos run as RM_API2 lays them out, against the emulator.

RM_API2 itself is not in this repository (the script takes a local checkout; the README gives
the result on RealMan's own demos). Here two demos are laid out the same way (`src/main.py`,
`src/core/demo_*.py` importing `src.Robotic_Arm`, the SDK bundled as `src/Robotic_Arm`: the
installed `Robotic_Arm` package), one that succeeds and one that cannot, and the script must
tell them apart, return code by return code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import Robotic_Arm

pytestmark = pytest.mark.ros  # the real SDK over loopback

REPO = Path(__file__).resolve().parents[1]

MAIN = """\
import os, sys
sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))
from core.demo import *
if __name__ == "__main__":
    main()
"""

DEMO = """\
import os, sys
sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))
from src.Robotic_Arm.rm_robot_interface import *

def main():
    robot = RoboticArm(rm_thread_mode_e(2))
    handle = robot.rm_create_robot_arm("192.168.1.18", 8080, 3)
    print("connected", handle.id)
    robot.rm_movej([0, 20, 0, 70, 0, 90, 0], 100, 0, 0, 1)
    robot.rm_movej_p([0.28, 0.0, 0.32, 3.142, 0, 3.142], 100, 0, 0, 1)
    robot.rm_movel({target}, 100, 0, 0, 1)
    robot.rm_movec([0.25, 0.03, 0.32, 3.142, 0, 3.142], [0.25, -0.03, 0.32, 3.142, 0, 3.142], 100, 0, 0, 0, 1)
    points = [[0.28, 0.05, 0.3, 3.142, 0, 3.142], [0.25, 0.08, 0.28, 3.142, 0, 3.142],
              [0.22, 0.05, 0.26, 3.142, 0, 3.142]]
    for i, p in enumerate(points):
        robot.rm_moves(p, 100, 0, 1 if i < len(points) - 1 else 0, 1)
    robot.rm_delete_robot_arm()
"""


def lay_out(root: Path, name: str, target: str) -> None:
    src = root / "Demo" / "RMDemo_Python" / f"RMDemo_{name}" / "src"
    (src / "core").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "core" / "__init__.py").write_text("")
    (src / "main.py").write_text(MAIN)
    (src / "core" / "demo.py").write_text(textwrap.dedent(DEMO.replace("{target}", target)))
    (src / "Robotic_Arm").symlink_to(Path(Robotic_Arm.__file__).parent, target_is_directory=True)


def test_the_script_runs_each_demo_with_its_sdk_and_reports_every_return_code(tmp_path: Path) -> None:
    lay_out(tmp_path, "SimpleProcess", "[0.2, 0.0, 0.32, 3.142, 0, 3.142]")
    lay_out(tmp_path, "Moves", "[1.5, 0.0, 0.32, 3.142, 0, 3.142]")  # 1.5 m: out of reach
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "realman_demos.py"), str(tmp_path),
                           "--demo", "SimpleProcess", "--demo", "Moves", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one demo failed
    results = {r["demo"]: r for r in json.loads(out.read_text())["results"]}
    good, bad = results["SimpleProcess"], results["Moves"]
    expected = ["rm_create_robot_arm", "rm_movej", "rm_movej_p", "rm_movel", "rm_movec",
                "rm_moves", "rm_moves", "rm_moves", "rm_delete_robot_arm"]
    assert [c["call"] for c in good["calls"]] == expected
    assert good["passed"] and good["failed"] == [] and good["complaints"] == [] and good["exit_code"] == 0
    assert {"movej_p", "movel", "movec", "moves"} <= set(good["controller_commands"])
    assert not bad["passed"] and bad["failed"] == [{"call": "rm_movel", "code": 1}]
    assert "PASS SimpleProcess" in proc.stdout and "FAIL Moves" in proc.stdout
    assert "rm_movel returned 1" in proc.stdout


def test_a_folder_that_is_not_rm_api2_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "realman_demos.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not an RM_API2 checkout" in proc.stderr
