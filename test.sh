#!/usr/bin/env bash
# The whole test suite (real rclpy over loopback DDS, the real RealMan SDK against the emulator).
# Extra arguments go to pytest (e.g. `./test.sh -k config`, `./test.sh -m slow`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
cd "$root"
exec "${ATE_VENV:-$root/.venv}/bin/python" -m pytest "$@"
