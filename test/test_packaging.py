"""The package installs the way a robot PC and a plain venv install it, and stays importable."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARE_DIRS = ("launch", "config", "urdf")
CONSOLE_SCRIPTS = ("arm_node", "arm_nodes", "joint_state_aggregator", "camera_node", "camera_nodes",
                   "inference_node", "supervisor_node", "ate_bringup", "ate_urdf",
                   "ate_realman_emulator", "ate_train", "ate_finetune", "ate_synthetic_dataset", "ate_align")
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "__pycache__",
                              "*.egg-info", ".pytest_cache", ".hypothesis", "out")


def _source_copy(tmp_path: Path) -> Path:
    """Builds write into the source tree (egg-info); keep them out of the checkout."""
    src = tmp_path / "src" / "ate_ros"
    shutil.copytree(REPO, src, ignore=SKIP)
    return src


def _expected_share_files() -> set:
    return {str(p.relative_to(REPO)) for d in SHARE_DIRS for p in (REPO / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_pip_install_into_a_clean_venv(tmp_path):
    src = _source_copy(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(src)])

    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    assert (site / "ate_ros" / "__init__.py").is_file()
    assert (site / "ate_core" / "__init__.py").is_file()
    share = env_dir / "share" / "ate_ros"
    installed = {str(p.relative_to(share)) for p in share.rglob("*") if p.is_file()}
    assert _expected_share_files() <= installed, _expected_share_files() - installed
    assert (share / "package.xml").is_file()
    assert (env_dir / "share/ament_index/resource_index/packages/ate_ros").is_file()
    for script in CONSOLE_SCRIPTS:
        assert (env_dir / "bin" / script).is_file(), script
    # Nothing else is installed in this venv: importing the core must not need ROS.
    _run([str(py), "-c", "import ate_core, sys; assert 'rclpy' not in sys.modules"])


def test_colcon_build_gives_the_install_space_ros2_launch_expects(tmp_path):
    colcon = Path(sys.executable).with_name("colcon")
    src = _source_copy(tmp_path)
    ws = src.parents[1]
    _run([str(colcon), "build", "--event-handlers", "console_direct-"], cwd=ws)
    prefix = ws / "install" / "ate_ros"
    share = prefix / "share" / "ate_ros"
    for d in SHARE_DIRS:
        assert (share / d).is_dir(), d
    assert _expected_share_files() <= {str(p.relative_to(share)) for p in share.rglob("*")}
    assert (prefix / "share/ament_index/resource_index/packages/ate_ros").is_file()
    for script in CONSOLE_SCRIPTS:  # where `ros2 run ate_ros <script>` looks
        assert (prefix / "lib" / "ate_ros" / script).is_file(), script

    site = next(prefix.glob("lib/python3*/site-packages"))
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PYTHONPATH": str(site)}
    found = _run([sys.executable, "-c",
                  "from ament_index_python.packages import get_package_share_directory as g;"
                  "print(g('ate_ros'))"], env=env, cwd=tmp_path).stdout.strip()
    assert Path(found) == share
    # The installed code finds its installed config (not the checkout's).
    found_cfg = _run([sys.executable, "-c", "from ate_ros.resources import default_config_path as d;"
                      "import ate_ros; print(ate_ros.__file__); print(d())"],
                     env=env, cwd=tmp_path).stdout.split()
    assert found_cfg[0].startswith(str(site)) and Path(found_cfg[1]) == share / "config/bimanual.yaml"


def _ate_core_imports():
    for path in (REPO / "ate_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield path, [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield path, [node.module]


def test_ate_core_never_imports_ros_or_ate_ros():
    bad = [(str(p.relative_to(REPO)), m) for p, mods in _ate_core_imports() for m in mods
           if m.split(".")[0] in {"rclpy", "ate_ros", "sensor_msgs", "std_msgs", "rosbag2_py"}]
    assert not bad
    # And at run time, importing every ate_core module leaves rclpy unloaded.
    code = ("import importlib, pkgutil, sys, ate_core\n"
            "for m in pkgutil.walk_packages(ate_core.__path__, 'ate_core.'):\n"
            "    importlib.import_module(m.name)\n"
            "assert 'rclpy' not in sys.modules, 'rclpy imported'\n"
            "assert not any(k.startswith('ate_ros') for k in sys.modules), 'ate_ros imported'\n")
    _run([sys.executable, "-c", code], cwd=REPO)


def test_code_stays_compatible_with_python_3_10():
    """Humble robot PCs run Python 3.10."""
    vermin = Path(sys.executable).with_name("vermin")
    paths = [p for p in ("ate_core", "ate_ros", "launch", "test", "bench", "setup.py")
             if (REPO / p).exists()]
    result = subprocess.run([str(vermin), "-t=3.10-", "--violations", "--eval-annotations",
                             "--no-tips", "-q", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_manifest_declares_what_a_robot_pc_needs():
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "ate_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "std_srvs", "trajectory_msgs",
            "visualization_msgs", "diagnostic_msgs", "robot_state_publisher", "launch",
            "launch_ros", "rviz2", "python3-opencv", "python3-yaml", "python3-numpy"} <= deps
