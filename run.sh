#!/usr/bin/env bash
# The main job: bring up the simulated bimanual robot on its embedded default and report.
# Extra arguments go to ate_bringup (see `./run.sh --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
exec "${ATE_VENV:-$root/.venv}/bin/python" -m ate_ros.bringup "$@"
