"""Where the package's share files (config, urdf, launch) are, installed or in a checkout."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "ate_ros"


def share_dir() -> Path:
    """share/ate_ros of the install (ament index), else the source checkout, else the venv."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            return Path(get_package_share_directory(PACKAGE))
        except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / PACKAGE


def default_config_path() -> Path:
    return share_dir() / "config" / "bimanual.yaml"
