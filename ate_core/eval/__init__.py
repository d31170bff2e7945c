"""Closed-loop evaluation of a policy checkpoint on the twin, through the robot's runtime, in
simulated time (:mod:`ate_core.eval.closed_loop`).

    python -m ate_core.eval --checkpoint outputs/train --task lift_box --episodes 20
"""

from ate_core.eval.closed_loop import (DEFAULT_LATENCY_MS, EVAL_SEED, EvalError, check_fit,
                                       eval_config, evaluate, load_policy, run_episode)
from ate_core.eval.report import EpisodeResult, EvalReport, wilson_interval

__all__ = ["DEFAULT_LATENCY_MS", "EVAL_SEED", "EvalError", "EpisodeResult", "EvalReport",
           "check_fit", "eval_config", "evaluate", "load_policy", "run_episode",
           "wilson_interval"]
