"""The cross-embodiment benchmark's pipeline (``ate_core.eval.cross_embodiment``): the smoke
config end to end, twice, with identical results; scene seeds that never overlap; a config
that is wrong anywhere is refused before anything runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ate_core.config import ConfigError, from_dict
from ate_core.eval.closed_loop import EVAL_SEED
from ate_core.eval.report import difference_interval
from ate_core.eval.cross_embodiment import (BenchConfig, demo_episodes, eval_seeds, load_bench_config,
                                            plot_curves, run_benchmark, table)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "cross_embodiment" / "smoke.yaml"
LOWDIM = REPO / "config" / "cross_embodiment" / "lowdim.yaml"


def _cells(results):
    return [(c["family"], c["variant"], c["size"], c["final"], c["curve"]) for c in results["cells"]]


def test_the_smoke_variant_runs_every_stage_and_twice_gives_identical_results(tmp_path):
    cfg = load_bench_config(SMOKE)
    first = run_benchmark(cfg, tmp_path / "a", jobs=2, log=lambda m: None)
    second = run_benchmark(cfg, tmp_path / "b", jobs=2, log=lambda m: None)
    assert _cells(first) == _cells(second)
    # the same episodes, scene by scene, not only the same counts
    for path in (tmp_path / "a" / "eval").rglob("done.json"):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        a, b = json.loads(path.read_text()), json.loads(twin.read_text())
        assert a["per_episode"] == b["per_episode"], path
    variants = {(c["family"], c["variant"]) for c in first["cells"]}
    assert ("diffusion", "ate_noise_target") in variants and ("flow", "ate_noise_target") not in variants
    assert len(variants) == 13
    # both switches reached the runs that use them
    ft = tmp_path / "a" / "finetune" / "diffusion"
    official = json.loads((ft / "ate_official" / "n2_s0" / "config.json").read_text())
    assert official["ate"]["y_reduction"] == "batch" and "official_imq" in official["ate"]["vae"]
    ours = json.loads((ft / "ate" / "n2_s0" / "config.json").read_text())
    assert ours["ate"].get("y_reduction", "sample") == "sample" and "ada_imq" in ours["ate"]["vae"]
    no_rkl = json.loads((ft / "ate_no_rkl" / "n2_s0" / "config.json").read_text())
    assert no_rkl["ate"]["vae"].endswith("baseline")
    # curves: every checkpoint of the variants that ask for one
    curve = next(c for c in first["cells"] if c["variant"] == "direct")["curve"]
    assert [p["step"] for p in curve] == [5, 10]
    assert "| diffusion | ate_official | 2 |" in table(first)
    for c in first["cells"]:  # every variant against direct of its family and size
        vs = c.get("vs_direct")
        if c["variant"] == "direct":
            assert vs is None
        else:
            base = next(d for d in first["cells"] if d["variant"] == "direct"
                        and (d["family"], d["size"]) == (c["family"], c["size"]))
            diff = c["final"]["average"]["rate"] - base["final"]["average"]["rate"]
            assert vs["difference"] == pytest.approx(diff) and vs["low"] <= diff <= vs["high"]
    assert plot_curves(first, tmp_path / "curves.png").stat().st_size > 1000
    # a finished run is not redone: a second call only reads what is there
    again = run_benchmark(cfg, tmp_path / "a", jobs=1, log=lambda m: None)
    assert _cells(again) == _cells(first)
    # ... and one of another config is refused before any work, never mixed into it
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("done.json")}
    with pytest.raises(RuntimeError, match=r"eval/diffusion/direct/n2_s0/step000005/pick_place: holds a result made with other settings"):
        run_benchmark(dataclasses.replace(cfg, latency_ms=50.0), tmp_path / "a", jobs=1, log=lambda m: None)
    with pytest.raises(RuntimeError, match=r"pretrain/flow: holds a result made with other settings"):
        flow = cfg.families["flow"]
        changed = {**cfg.families, "flow": dataclasses.replace(flow, pretrain={**flow.pretrain, "lr": 5e-4})}
        run_benchmark(dataclasses.replace(cfg, families=changed), tmp_path / "a", jobs=1, log=lambda m: None)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("done.json")}


def test_evaluation_scenes_never_overlap_the_demonstrations_or_each_other():
    cfg = load_bench_config(LOWDIM)
    seeds = [set(eval_seeds(s, cfg.eval_episodes)) for s in range(cfg.seeds)]
    assert all(min(s) >= EVAL_SEED for s in seeds)
    assert not set.intersection(*seeds) and sum(map(len, seeds)) == cfg.seeds * cfg.eval_episodes
    episodes = [set(demo_episodes(s, max(cfg.adapt_sizes), max(cfg.adapt_sizes))) for s in range(cfg.seeds)]
    assert not set.intersection(*episodes)
    assert demo_episodes(1, 10, 50) == list(range(50, 60))


@pytest.mark.parametrize("change, key, message", [
    ({"families": {"diffusion": {"policy": {"type": "diffusion", "unet_down_dims": "x"}}}},
     "families.diffusion.pretrain.policy.unet_down_dims", "expected a list"),
    ({"families": {"flow": {"policy": {"type": "flow"}, "finetune": {"stepz": 3}}}},
     "families.flow.finetune.stepz", "unknown key"),
    ({"families": {"flow": {"policy": {"type": "flow"}, "finetune": {"lr": 1e-3}}}},
     "families.flow.finetune.steps", "required"),
    ({"tasks": ["lift_box"]}, "tasks", "two-arm task"),
    ({"pretrain_episodes": 600}, "pretrain_episodes", "where evaluation starts"),
    ({"variants": [{"name": "a", "reuse": "b"}]}, "variants", "not a variant"),
    ({"variants": [{"name": "a", "ate": {"y_reduction": "mean"}}]}, "variants.a.ate.y_reduction", "'mean'"),
])
def test_a_wrong_config_is_refused_naming_the_key(change, key, message):
    data = yaml.safe_load(SMOKE.read_text())
    for k, v in change.items():
        data[k] = v
    with pytest.raises(ConfigError, match=message) as e:
        from_dict(BenchConfig, data, "bench.yaml")  # every stage's config, checked on loading
    assert e.value.key == key and e.value.source == "bench.yaml"


def test_a_config_built_in_code_is_checked_before_anything_runs(tmp_path):
    cfg = dataclasses.replace(load_bench_config(SMOKE), tasks=("lift_box",))
    with pytest.raises(ConfigError, match="two-arm task"):
        run_benchmark(cfg, tmp_path, jobs=1, log=lambda m: None)
    assert not (tmp_path / "data").exists()


def test_the_shipped_configs_load():
    for path in (REPO / "config" / "cross_embodiment").glob("*.yaml"):
        cfg = load_bench_config(path)
        assert not list(cfg.problems()), path


def test_the_bench_script_refuses_a_bad_config_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseedz: 3\n")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cross_embodiment.py"), "--config", str(bad),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "seedz: unknown key" in proc.stderr


def test_a_failing_step_is_named_and_stops_the_run(tmp_path):
    """A step that fails (here: the robot config it reads is missing) stops the run, named with
    its folder and the reason; nothing after it runs."""
    cfg = dataclasses.replace(load_bench_config(SMOKE), robot_config=str(tmp_path / "no_such.yaml"))
    with pytest.raises(RuntimeError, match=r"data/rm65/pick_place .*no_such.yaml"):
        run_benchmark(cfg, tmp_path / "out", jobs=1, log=lambda m: None)
    assert not (tmp_path / "out" / "pretrain").exists()


def test_the_difference_interval_is_newcombes():
    # Newcombe (1998), Statistics in Medicine 17, table II, example (a): 56/70 - 48/80,
    # method 10 (hybrid score): 0.0524 to 0.3339.
    d, low, high = difference_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    d, low, high = difference_interval(0, 10, 0, 10)  # no information: wide, around 0
    assert d == 0.0 and low < -0.25 and high > 0.25
