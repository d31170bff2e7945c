"""The cross-embodiment benchmark: pre-train on one arm, adapt to the RM75-B pair with few
demonstrations, directly or with ATE, and judge every adapted policy in closed loop on the twin.

One run, from a benchmark config (``config/cross_embodiment/*.yaml``, :class:`BenchConfig`):

1. **Demonstrations** (the twin's scripted experts, :mod:`ate_core.twin.demos`): per task,
   ``pretrain_episodes`` of the RM65-B (6-DoF + gripper, ``rm65_single``) and, for the
   adaptation, ``max(adapt_sizes) x len(seeds)`` of the RM75-B pair, so each seed fine-tunes on
   its own, disjoint demonstrations (seed i takes episodes ``i * max .. i * max + n - 1``).
   Every demonstration's scene seed is below :data:`~ate_core.eval.closed_loop.EVAL_SEED`;
   evaluation scenes start there, so none is ever scored on a scene it was shown.
2. **Pre-training**, per policy family, on every task's RM65-B demonstrations (one multi-task
   policy; the instruction tells the tasks apart).
3. **Alignment** (ATE stage 1, :mod:`ate_core.align`): a pre-training VAE per MMD kernel on
   the RM65-B chunks, then per kernel, size and seed an adaptation VAE on that seed's RM75-B
   chunks with the reverse KL, and the same VAE with its KL to N(0, I) (the ablation).
4. **Fine-tuning** on the RM75-B demonstrations, per family, variant, size and seed
   (:class:`Variant`: plain, or ATE with one adaptation VAE and guidance settings).
5. **Closed-loop evaluation** (:func:`ate_core.eval.closed_loop.evaluate`: the robot's own
   inference loop and supervisor on the twin) of the last checkpoint on ``eval_episodes``
   scenes per task and seed, and of the earlier checkpoints on ``curve_episodes`` (the
   convergence curve). Variant and family share the scenes of a seed (paired comparisons).

Every step writes into its own folder under the run's output folder and is skipped when its
result is already there, so an interrupted run continues where it stopped. Jobs of one stage
run in ``jobs`` worker processes, each with one torch thread. With a fixed inference latency
(the default) the whole run is a function of the config: two runs agree to the last episode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ate_core.config import ConfigError, Problem, checked, from_dict, in_range, nonempty, read_yaml
from ate_core.eval.closed_loop import EVAL_SEED
from ate_core.eval.report import difference_interval, wilson_interval

__all__ = ["BenchConfig", "Variant", "Family", "load_bench_config", "run_benchmark", "summarize",
           "eval_seeds", "demo_episodes"]

#: Seeds of one evaluation seed index are ``EVAL_SEED + SEED_STRIDE * i + k``.
SEED_STRIDE = 1000
#: Policy families the benchmark knows.
FAMILIES = ("diffusion", "flow")
#: MMD kernels of the alignment VAEs (``loss.mmd_kernel``): ours and the official code's.
KERNELS = ("imq", "official_imq")
DONE = "done.json"


def _positive(value: int) -> Optional[str]:
    return None if value > 0 else f"{value} must be > 0"


@dataclass(frozen=True)
class Variant:
    """One way of adapting the pre-trained policy.

    ``method``: ``plain`` (direct fine-tuning) or ``ate``. For ``ate``: ``kernel``, the MMD
    kernel of the alignment VAEs; ``reverse_kl`` false guides with the VAE whose KL goes to
    N(0, I) (the ablation); ``ate`` overrides the fine-tuning config's ``ate:`` section
    (``y_reduction``, ``latent_target``, ...). ``inference_guidance``: sample with ATE's latent
    guidance as well (the project's extension). ``reuse``: the name of the variant whose
    fine-tuned checkpoints this one evaluates (it trains nothing itself). ``families`` and
    ``sizes``: where it runs (empty: every one).
    """

    name: str = checked(check=nonempty)
    method: str = checked("ate", check=lambda v: None if v in ("plain", "ate") else f"{v!r}: plain | ate")
    kernel: str = checked("imq", check=lambda v: None if v in KERNELS else f"{v!r}: one of {list(KERNELS)}")
    reverse_kl: bool = True
    ate: Mapping[str, Any] = field(default_factory=dict)
    inference_guidance: bool = False
    reuse: str = ""
    families: Tuple[str, ...] = ()
    sizes: Tuple[int, ...] = ()
    curve: bool = False

    def runs_on(self, family: str, size: int) -> bool:
        return (not self.families or family in self.families) and (not self.sizes or size in self.sizes)


@dataclass(frozen=True)
class Family:
    """A policy family: its ``policy`` section (``ate_train``'s) and the training settings of
    pre-training and fine-tuning (any key of a train config: steps, batch_size, lr, ...)."""

    policy: Mapping[str, Any]
    pretrain: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)

    @property
    def finetune_steps(self) -> int:
        """The fine-tuning's last step (``finetune.steps``, required: the evaluation reads its
        checkpoints)."""
        return int(self.finetune["steps"])


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run (module docstring). ``image``: observations are camera frames at
    ``image_size`` (WIDTHxHEIGHT) instead of the scene's low-dimensional state."""

    name: str = checked(check=nonempty)
    tasks: Tuple[str, ...] = ("pick_place", "push")
    pretrain_episodes: int = checked(200, check=_positive)
    adapt_sizes: Tuple[int, ...] = (10, 50)
    seeds: int = checked(3, check=_positive, doc="training seeds (and demonstration and scene sets)")
    eval_episodes: int = checked(50, check=_positive, doc="per task and seed, last checkpoint")
    curve_episodes: int = checked(10, check=_positive, doc="per task and seed, earlier checkpoints")
    checkpoints: int = checked(4, check=_positive, doc="fine-tuning checkpoints, evenly spaced")
    time_limit_s: float = checked(20.0, check=in_range(0.1, 600.0))
    latency_ms: float = checked(100.0, check=in_range(0.0, 10_000.0))
    image: bool = False
    image_size: str = "96x72"
    robot_config: str = "config/bimanual.yaml"
    align: Mapping[str, Any] = field(default_factory=dict)
    align_pre_steps: int = checked(2000, check=_positive)
    align_ada_steps: int = checked(1000, check=_positive)
    families: Mapping[str, Family] = field(default_factory=dict)
    variants: Tuple[Variant, ...] = ()

    def problems(self) -> Iterator[Problem]:
        from ate_core.twin.tasks import TASKS
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            yield "tasks", f"{unknown or 'none'}: expected some of {sorted(TASKS)}"
        for task in self.tasks:
            if task in TASKS and not TASKS[task].single_arm:
                yield "tasks", f"{task}: a two-arm task; the RM65-B source is recorded single-arm"
        if not self.adapt_sizes or any(n <= 0 for n in self.adapt_sizes):
            yield "adapt_sizes", f"{list(self.adapt_sizes)}: expected demonstration counts > 0"
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            yield "families", f"{bad or 'none'}: expected some of {list(FAMILIES)}"
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            yield "variants", f"{names}: expected distinct names"
        for v in self.variants:
            if v.reuse and v.reuse not in names:
                yield "variants", f"{v.name}: reuses {v.reuse!r}, which is not a variant"
            if v.reuse and any(r.reuse for r in self.variants if r.name == v.reuse):
                yield "variants", f"{v.name}: reuses {v.reuse!r}, which reuses another"
        yield from self._stage_problems()
        last_demo = self.pretrain_episodes + max(self.adapt_sizes or (0,)) * self.seeds
        if last_demo * 2 >= EVAL_SEED:  # the experts skip a failed seed: leave room
            yield "pretrain_episodes", f"demonstrations would reach scene seeds near {EVAL_SEED}, " \
                                       f"where evaluation starts"

    def _stage_problems(self) -> Iterator[Problem]:
        """Each stage's config as the run will build it (with placeholder paths), checked now
        rather than in a worker an hour later."""
        from ate_core.align.config import align_config_from_dict
        from ate_core.steer.finetune import finetune_config_from_dict
        from ate_core.train.config import train_config_from_dict

        checks = [("align", align_config_from_dict, _merge(self.align, {"stage": "ada", "pre_checkpoint": "x",
                                                                         "dataset": {"roots": ["x"]}}))]
        for fam, family in self.families.items():
            checks.append((f"families.{fam}.pretrain", train_config_from_dict,
                           _merge({"dataset": {"roots": ["x"]}, "policy": dict(family.policy)}, family.pretrain)))
            checks.append((f"families.{fam}.finetune", finetune_config_from_dict,
                           _merge({"dataset": {"roots": ["x"]}, "init_from": "x", "method": "plain"},
                                  family.finetune)))
            if family.policy.get("type") != fam:
                yield f"families.{fam}.policy.type", f"{family.policy.get('type')!r}, expected {fam!r}"
        for where, build, data in checks:
            try:
                build(data, where)
            except ConfigError as e:
                yield f"{where}.{e.key}" if e.key else where, e.message
        for fam, family in self.families.items():
            if not isinstance(family.finetune.get("steps"), int):
                yield f"families.{fam}.finetune.steps", "required: an int (the evaluation reads its checkpoints)"
        for v in self.variants:
            try:
                from ate_core.steer.config import GuidanceConfig
                from_dict(GuidanceConfig, dict(v.ate), f"variants.{v.name}.ate")
            except ConfigError as e:
                yield f"variants.{v.name}.ate.{e.key}", e.message

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def load_bench_config(path: os.PathLike | str) -> BenchConfig:
    """A :class:`BenchConfig` from YAML; every key is checked (:class:`ConfigError`)."""
    return from_dict(BenchConfig, read_yaml(path), str(path))


def eval_seeds(seed_index: int, episodes: int) -> List[int]:
    """The evaluation scenes of seed ``seed_index``: from :data:`EVAL_SEED` up, one block per seed."""
    start = EVAL_SEED + SEED_STRIDE * seed_index
    return list(range(start, start + episodes))


def demo_episodes(seed_index: int, size: int, per_seed: int) -> List[int]:
    """The RM75-B episodes seed ``seed_index`` fine-tunes on (disjoint across seeds)."""
    return list(range(seed_index * per_seed, seed_index * per_seed + size))


# ---------------------------------------------------------------------------------------------
# Jobs (run in worker processes: plain arguments in, plain data out)


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)


def spec_of(*parts: Any) -> str:
    """A step's fingerprint: its own settings and its inputs' fingerprints (so a step whose
    inputs were made differently is not taken for done)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(folder: Path, spec: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The step's result where it finished; an error where it finished with other settings."""
    path = folder / DONE
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    if spec is not None and done.get("spec") != spec:
        raise RuntimeError(f"{folder}: holds a result made with other settings or inputs (fingerprint "
                           f"{done.get('spec')}, this run's {spec}); use another --out, or remove the folder "
                           f"to redo that step")
    return done


def _finish(folder: Path, spec: str, result: Dict[str, Any]) -> Dict[str, Any]:
    result = {**result, "spec": spec}
    tmp = folder / (DONE + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, folder / DONE)
    return result


def _fresh(folder: Path) -> Path:
    """An empty ``folder`` for a step that did not finish (what it left is discarded)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def job_demos(spec: str, folder: str, task: str, embodiment: str, episodes: int, image: bool,
              image_size: str, robot_config: str) -> Dict[str, Any]:
    from ate_core.robot.config import load_config
    from ate_core.twin.demos import write_demonstrations
    from ate_core.twin.model import TwinRobot
    from ate_core.twin.tasks import get_task

    out = Path(folder)
    if (done := _done(out, spec)) is not None:
        return done
    _one_thread()
    _fresh(out)
    cfg = load_config(robot_config)
    report = write_demonstrations(out / "data", get_task(task), embodiment, episodes,
                                  robot=TwinRobot.from_config(cfg), image_size=image_size,
                                  render_size=f"{cfg.sim.camera_width}x{cfg.sim.camera_height}",
                                  cameras=None if image else (), env_state=not image, progress=False)
    if report.written < episodes:
        raise RuntimeError(f"{task} ({embodiment}): the expert succeeded in only {report.written} of "
                           f"{episodes} episodes")
    from ate_core.data.episode import EpisodeReader, list_episodes
    seeds = [EpisodeReader(out / "data", e, cameras=()).extra["seed"] for e in list_episodes(out / "data")]
    if max(seeds) >= EVAL_SEED:
        raise RuntimeError(f"{task} ({embodiment}): a demonstration used scene seed {max(seeds)}, "
                           f"at or above the evaluation's first ({EVAL_SEED})")
    return _finish(out, spec, {"episodes": report.written, "failed": report.failed, "seeds": [min(seeds), max(seeds)]})


def job_train(spec: str, folder: str, config: Dict[str, Any], kind: str) -> Dict[str, Any]:
    """``kind``: ``train`` (ate_train), ``finetune`` (ate_finetune) or ``align`` (ate_align)."""
    out = Path(folder)
    if (done := _done(out, spec)) is not None:
        return done
    _one_thread()
    _fresh(out)
    config = {**config, "output_dir": str(out / "run")}
    started = time.perf_counter()
    if kind == "train":
        from ate_core.train.config import train_config_from_dict
        from ate_core.train.trainer import train
        result = train(train_config_from_dict(config, folder), progress=False, source=folder)
        final = float(result.losses[-1]) if result.losses else None
    elif kind == "finetune":
        from ate_core.steer.finetune import finetune, finetune_config_from_dict
        result = finetune(finetune_config_from_dict(config, folder), progress=False, source=folder)
        final = float(result.losses[-1]) if result.losses else None
    elif kind == "align":
        from ate_core.align.config import align_config_from_dict
        from ate_core.align.trainer import train_vae
        result = train_vae(align_config_from_dict(config, folder), progress=False, source=folder)
        final = None
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    (out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    return _finish(out, spec, {"final_loss": final, "train_s": round(time.perf_counter() - started, 1)})


def job_eval(spec: str, folder: str, checkpoint: str, task: str, seeds: List[int], robot_config: str,
             latency_ms: float, time_limit_s: float, guidance: bool) -> Dict[str, Any]:
    from ate_core.eval.closed_loop import evaluate
    from ate_core.robot.config import load_config
    from ate_core.twin.tasks import get_task

    out = Path(folder)
    if (done := _done(out, spec)) is not None:
        return done
    _one_thread()
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(robot_config)
    if guidance:
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, guidance=True))
    report = evaluate(checkpoint, get_task(task), seeds, config=cfg, config_source=robot_config,
                      latency_ms=latency_ms, time_limit_s=time_limit_s, torch_threads=1)
    episodes = [{"seed": e.seed, "success": bool(e.success),
                 "time_to_success_s": e.time_to_success_s,
                 "interventions": int(sum(e.interventions.values())), "chunks": e.chunks}
                for e in report.episodes]
    return _finish(out, spec, {"task": task, "successes": report.successes, "episodes": len(episodes),
                         "per_episode": episodes, "wall_s": round(sum(e.wall_s for e in report.episodes), 1)})


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Job:
    key: str
    fn: Callable[..., Dict[str, Any]]
    args: tuple
    after: Tuple[str, ...] = ()


def _run_jobs(jobs: Sequence[_Job], workers: int, log: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    """Every job once its ``after`` jobs are done, ``workers`` at a time (in this process with one
    worker), the first ready in ``jobs``' order: evaluation of one checkpoint starts when a
    worker has no training step left to take."""
    results: Dict[str, Dict[str, Any]] = {}
    pending = list(jobs)
    started = time.perf_counter()
    stages: Dict[str, List[int]] = {}
    for job in jobs:
        stages.setdefault(job.key.split("/")[0], [0, 0])[1] += 1

    def finished(job: _Job, result: Dict[str, Any]) -> None:
        results[job.key] = result
        stage = stages[job.key.split("/")[0]]
        stage[0] += 1
        if stage[0] == stage[1]:
            log(f"{job.key.split('/')[0]}: {stage[1]} jobs done at {time.perf_counter() - started:.0f} s")

    def outcome(job: _Job, call: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        try:
            return call()
        except Exception as e:  # which step failed, then why
            raise RuntimeError(f"{job.key} ({job.args[1]}): {type(e).__name__}: {e}") from e

    if workers <= 1:
        for job in pending:  # built in dependency order
            finished(job, outcome(job, lambda: job.fn(*job.args)))
        return results
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: Dict[Any, _Job] = {}
        try:
            while pending or running:
                # at most one step per worker, the first ready in plan order: every training
                # step (which unlocks others) before any evaluation
                for job in [j for j in pending if all(a in results for a in j.after)]:
                    if len(running) >= workers:
                        break
                    pending.remove(job)
                    running[pool.submit(job.fn, *job.args)] = job
                if not running:
                    raise RuntimeError(f"jobs wait for jobs that do not exist: {[j.key for j in pending[:3]]}")
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    finished(job, outcome(job, future.result))
        except BaseException:  # a failed step or Ctrl-C: the steps in flight are abandoned now
            for process in multiprocessing.active_children():
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _checkpoint_steps(steps: int, count: int) -> List[int]:
    every = max(1, steps // count)
    marks = sorted({min(steps, every * k) for k in range(1, count + 1)} | {steps})
    return marks


def plan(cfg: BenchConfig, out: Path) -> List[_Job]:
    """Every step of the run, in dependency order, each with its fingerprint (:func:`spec_of`)."""
    per_seed = max(cfg.adapt_sizes)
    data = out / "data"
    jobs: List[_Job] = []
    specs: Dict[str, str] = {}

    def add(key: str, fn: Callable[..., Dict[str, Any]], args: tuple, after: Tuple[str, ...] = ()) -> None:
        specs[key] = spec_of(fn.__name__, args[1:], [specs[a] for a in after])
        jobs.append(_Job(key, fn, (specs[key], str(out / key), *args[1:]), after))

    for task in cfg.tasks:
        add(f"data/rm65/{task}", job_demos, (None, task, "rm65_single", cfg.pretrain_episodes, cfg.image,
                                             cfg.image_size, cfg.robot_config))
        add(f"data/rm75/{task}", job_demos, (None, task, "rm75_bimanual", per_seed * cfg.seeds, cfg.image,
                                             cfg.image_size, cfg.robot_config))
    rm65 = [str(data / "rm65" / t / "data") for t in cfg.tasks]
    rm75 = [str(data / "rm75" / t / "data") for t in cfg.tasks]
    src = tuple(f"data/rm65/{t}" for t in cfg.tasks)
    tgt = tuple(f"data/rm75/{t}" for t in cfg.tasks)

    for fam, family in cfg.families.items():
        conf = _merge({"dataset": {"roots": rm65}, "policy": dict(family.policy), "num_workers": 0,
                       "device": "cpu", "amp": False, "seed": 1000}, family.pretrain)
        add(f"pretrain/{fam}", job_train, (None, conf, "train"), src)
    kernels = sorted({v.kernel for v in cfg.variants if v.method == "ate"})
    for kernel in kernels:
        conf = _merge(cfg.align, {"stage": "pre", "dataset": {"roots": rm65}, "steps": cfg.align_pre_steps,
                                  "loss": {"mmd_kernel": kernel}, "device": "cpu", "baseline": False})
        add(f"align/pre_{kernel}", job_train, (None, conf, "align"), src)
        for size in cfg.adapt_sizes:
            if not any(v.method == "ate" and v.kernel == kernel and v.runs_on(f, size)
                       for v in cfg.variants for f in cfg.families):
                continue
            for s in range(cfg.seeds):
                conf = _merge(cfg.align, {
                    "stage": "ada", "dataset": {"roots": rm75, "episodes": demo_episodes(s, size, per_seed)},
                    "pre_checkpoint": str(out / "align" / f"pre_{kernel}" / "run"),
                    "steps": cfg.align_ada_steps, "loss": {"mmd_kernel": kernel}, "device": "cpu",
                    "baseline": True, "seed": 1000 + s})
                add(_ada_key(kernel, size, s), job_train, (None, conf, "align"), (f"align/pre_{kernel}", *tgt))

    for fam, family in cfg.families.items():
        for v in cfg.variants:
            if v.reuse:
                continue
            for size in cfg.adapt_sizes:
                if not v.runs_on(fam, size):
                    continue
                for s in range(cfg.seeds):
                    conf = _merge({"method": v.method, "init_from": str(out / "pretrain" / fam / "run"),
                                   "dataset": {"roots": rm75, "episodes": demo_episodes(s, size, per_seed)},
                                   "num_workers": 0, "device": "cpu", "amp": False, "seed": 2000 + s},
                                  family.finetune)
                    conf["save_every"] = max(1, family.finetune_steps // cfg.checkpoints)
                    after: Tuple[str, ...] = (f"pretrain/{fam}", *tgt)
                    if v.method == "ate":
                        vae = out / _ada_key(v.kernel, size, s) / "run"
                        if not v.reverse_kl:
                            vae = vae / "baseline"
                        conf["ate"] = _merge(conf.get("ate", {}), {**v.ate, "vae": str(vae)})
                        after += (_ada_key(v.kernel, size, s),)
                    add(_ft_key(fam, v.name, size, s), job_train, (None, conf, "finetune"), after)

    for fam, v, size, last, evaluated in _cells(cfg):
        for s in range(cfg.seeds):
            trained = _ft_key(fam, v.reuse or v.name, size, s)
            for step in evaluated:
                n = cfg.eval_episodes if step == last else cfg.curve_episodes
                for task in cfg.tasks:
                    add(_eval_key(fam, v.name, size, s, step, task), job_eval, (
                        None, str(out / trained / "run" / "checkpoints" / f"{step:06d}"), task,
                        eval_seeds(s, n), cfg.robot_config, cfg.latency_ms, cfg.time_limit_s,
                        v.inference_guidance), (trained,))
    return jobs


def _cells(cfg: BenchConfig) -> Iterator[Tuple[str, Variant, int, int, List[int]]]:
    """(family, variant, size, last step, the steps evaluated) of every cell of the results."""
    for fam, family in cfg.families.items():
        last = family.finetune_steps
        for v in cfg.variants:
            for size in cfg.adapt_sizes:
                if v.runs_on(fam, size):
                    yield fam, v, size, last, (_checkpoint_steps(last, cfg.checkpoints) if v.curve else [last])


def run_benchmark(cfg: BenchConfig, out: os.PathLike | str, *, jobs: int = 2,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or continue) the benchmark of ``cfg`` in ``out``; returns :func:`summarize`'s result,
    also written to ``out/results.json``. A step already done with other settings or inputs is an
    error (a run is never mixed from two configs)."""
    for key, message in cfg.problems():
        raise ConfigError(cfg.name, key, message)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(cfg, out)
    for job in steps:  # before any work: a folder of another config stops the run now
        _done(Path(job.args[1]), job.args[0])
    done = _run_jobs(steps, jobs, log)
    results = summarize(cfg, out)
    results["demonstrations"] = {k: v for k, v in done.items() if k.startswith("data/")}
    results["eval_wall_s"] = round(sum(v["wall_s"] for k, v in done.items() if k.startswith("eval/")), 1)
    results["train_s"] = round(sum(v["train_s"] for v in done.values() if "train_s" in v), 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def _ada_key(kernel: str, size: int, s: int) -> str:
    return f"align/ada_{kernel}_n{size}_s{s}"


def _ft_key(fam: str, variant: str, size: int, s: int) -> str:
    return f"finetune/{fam}/{variant}/n{size}_s{s}"


def _eval_key(fam: str, variant: str, size: int, s: int, step: int, task: str) -> str:
    return f"eval/{fam}/{variant}/n{size}_s{s}/step{step:06d}/{task}"


# ---------------------------------------------------------------------------------------------
# Results


def _rate(successes: int, n: int) -> Dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"successes": successes, "episodes": n, "rate": successes / n if n else 0.0,
            "low": low, "high": high}


def summarize(cfg: BenchConfig, out: os.PathLike | str) -> Dict[str, Any]:
    """Success per family, variant and size: per task and on average (pooled over tasks and
    seeds, with 95 % Wilson intervals), per seed, and per fine-tuning checkpoint (the curve);
    and each variant's average against direct fine-tuning of its family and size (``vs_direct``:
    the difference with Newcombe's interval). The intervals pool every episode; they treat the
    tasks' and seeds' episodes as one sample, so they leave out the spread between seeds (the
    per-seed rates show it)."""
    out = Path(out)
    cells: List[Dict[str, Any]] = []
    for fam, v, size, last, evaluated in _cells(cfg):
        curve = []
        final: Dict[str, Any] = {}
        for step in evaluated:
            per_task: Dict[str, List[int]] = {t: [0, 0] for t in cfg.tasks}
            per_seed = []
            for s in range(cfg.seeds):
                got = [0, 0]
                for task in cfg.tasks:
                    r = _done(out / _eval_key(fam, v.name, size, s, step, task))
                    if r is None:
                        raise FileNotFoundError(f"{out / _eval_key(fam, v.name, size, s, step, task)}: "
                                                f"no evaluation result")
                    per_task[task][0] += r["successes"]
                    per_task[task][1] += r["episodes"]
                    got[0] += r["successes"]
                    got[1] += r["episodes"]
                per_seed.append(got[0] / got[1])
            total = [sum(v_[0] for v_ in per_task.values()), sum(v_[1] for v_ in per_task.values())]
            point = {"step": step, "average": _rate(*total),
                     "tasks": {t: _rate(*c) for t, c in per_task.items()}, "per_seed": per_seed}
            curve.append(point)
            if step == last:
                final = point
        cells.append({"family": fam, "variant": v.name, "size": size, "final": final,
                      "curve": curve if v.curve else []})
    direct = {(c["family"], c["size"]): c["final"]["average"] for c in cells
              if c["variant"] == "direct"}
    for c in cells:  # each variant against direct fine-tuning of its family and size
        base = direct.get((c["family"], c["size"]))
        if base is not None and c["variant"] != "direct":
            a = c["final"]["average"]
            d, low, high = difference_interval(a["successes"], a["episodes"],
                                               base["successes"], base["episodes"])
            c["vs_direct"] = {"difference": d, "low": low, "high": high}
    return {"benchmark": cfg.name, "tasks": list(cfg.tasks), "seeds": cfg.seeds,
            "eval_episodes": cfg.eval_episodes, "curve_episodes": cfg.curve_episodes,
            "latency_ms": cfg.latency_ms, "time_limit_s": cfg.time_limit_s, "cells": cells}


def table(results: Mapping[str, Any]) -> str:
    """The results as a Markdown table: one row per family, variant and size."""
    tasks = results["tasks"]
    head = ("| family | variant | demos/task | " + " | ".join(tasks)
            + " | average (95 % CI) | vs direct, points (95 % CI) | per seed |")
    lines = [head, "|" + "---|" * (6 + len(tasks))]
    for c in results["cells"]:
        f = c["final"]
        row = [c["family"], c["variant"], str(c["size"])]
        row += [f"{f['tasks'][t]['successes']}/{f['tasks'][t]['episodes']}" for t in tasks]
        a = f["average"]
        row.append(f"**{100 * a['rate']:.1f} %** ({100 * a['low']:.0f}-{100 * a['high']:.0f})")
        vs = c.get("vs_direct")
        row.append("" if vs is None else f"{100 * vs['difference']:+.1f} "
                   f"({100 * vs['low']:+.1f} to {100 * vs['high']:+.1f})")
        row.append(", ".join(f"{100 * p:.0f}" for p in f["per_seed"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_curves(results: Mapping[str, Any], path: os.PathLike | str) -> Optional[Path]:
    """Success versus fine-tuning steps, one panel per family and size (PNG); None without curves."""
    cells = [c for c in results["cells"] if c["curve"]]
    if not cells:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(c["family"], c["size"]) for c in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (fam, size) in zip(axes[0], panels):
        for c in cells:
            if (c["family"], c["size"]) != (fam, size):
                continue
            xs = [p["step"] for p in c["curve"]]
            ys = [100 * p["average"]["rate"] for p in c["curve"]]
            lo = [100 * p["average"]["low"] for p in c["curve"]]
            hi = [100 * p["average"]["high"] for p in c["curve"]]
            line, = ax.plot(xs, ys, marker="o", label=c["variant"])
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{fam}, {size} demos/task")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("success (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['benchmark']}: success vs fine-tuning steps (95 % Wilson bands)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
