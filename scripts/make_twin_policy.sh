#!/usr/bin/env bash
# The policy that ships for the twin's lift_box task (policies/twin_lift_box, what ./run.sh runs):
# scripted-expert demonstrations, a small Diffusion Policy trained on them, its weights copied
# into the package, and a closed-loop check on evaluation seeds (from 1000) without ROS.
#
#   scripts/make_twin_policy.sh [WORK_DIR]      # default WORK_DIR: outputs/make_twin_policy
#
# About 70 min on a 2-core CPU (3 min of demonstrations, the rest training); any GPU is used.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/bootstrap.sh"
py="${ATE_VENV:-$root/.venv}/bin/python"
work="${1:-outputs/make_twin_policy}"
data="$work/demos"
run="$work/train"

[ -e "$data" ] || "$py" -m ate_core.twin.demos --task lift_box --episodes 120 --seed 0 \
    --out "$data"
"$py" -m ate_core.train.cli --config config/train_twin_lift_box.yaml \
    --set "dataset.roots=[$data]" --output-dir "$run"
rm -rf policies/twin_lift_box.new
cp -r "$run/checkpoints/last/pretrained_model" policies/twin_lift_box.new
rm -rf policies/twin_lift_box
mv policies/twin_lift_box.new policies/twin_lift_box
"$py" -m ate_core.eval --checkpoint policies/twin_lift_box --task lift_box --episodes 50 \
    --seed 1000 --json "$work/eval.json"
