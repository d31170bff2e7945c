"""Where the package's share files (config, urdf, launch) are, installed or in a checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

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


def missing_executable(package: str, executable: str) -> Optional[str]:
    """Why ``package``'s ``executable`` cannot start here (not installed, no such program), or
    None if it can. A launch file asks before it starts anything: ``ros2 launch`` fails on a
    missing package only once it reaches that node, and leaves the nodes before it running."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        prefix = get_package_prefix(package)
    except PackageNotFoundError:
        return f"package '{package}' is not installed (not on AMENT_PREFIX_PATH)"
    if not os.access(os.path.join(prefix, "lib", package, executable), os.X_OK):
        return f"package '{package}' at {prefix} has no executable '{executable}'"
    return None
