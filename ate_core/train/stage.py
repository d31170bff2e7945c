"""How a learning stage ends on the command line: one line on stderr and an exit status.

``ate_train``, ``ate_align`` and ``ate_finetune`` share one contract, so a script (or CI) that
chains them can tell a mistake in what it passed from a run that went wrong:

* 2: the config, a checkpoint, a VAE or a data set is wrong (the line names the file and the
  key); also any :class:`TrainingError` raised before training starts (nothing to resume);
* 1: a run that fails while training (:class:`TrainingError`: a diverged loss, too little data
  for one batch, an output folder that already holds another run);
* 130: interrupted (Ctrl-C).

Under torchrun every rank runs the stage and meets the same error; only rank 0 prints it.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

__all__ = ["TrainingError", "run_stage", "is_main_process", "first_line", "print_error"]

T = TypeVar("T")


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on (no data, nothing to resume, a diverged loss)."""


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the one process that prints."""
    return os.environ.get("RANK", "0") in ("", "0")


def first_line(e: BaseException) -> str:
    """An exception as the one line a command-line error shows."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def print_error(prog: str, message: str) -> None:
    """``<prog>: error: <message>`` on stderr, from the main process only."""
    if is_main_process():
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run_stage(prog: str, prepare: Callable[[], T], run: Callable[[T], None], *, resumable: bool = False) -> int:
    """``run(prepare())`` with every expected failure reported as one line; the exit status.

    ``prepare`` reads and checks the inputs (nothing is written yet), ``run`` trains and prints
    the result. ``resumable``: the stage takes ``--resume``, which Ctrl-C's line then suggests.
    """
    # Imported here: the CLIs import this module before parsing arguments, and --help must not
    # wait for torch.
    from ate_core.config import ConfigError
    from ate_core.data.episode import EpisodeFormatError
    from ate_core.data.spaces import ActionSpaceError, NormStatsError
    from ate_core.io import CheckpointError

    bad_input = (ConfigError, CheckpointError, ActionSpaceError, EpisodeFormatError, NormStatsError)
    try:
        try:
            prepared = prepare()
        except TrainingError as e:
            print_error(prog, first_line(e))
            return 2
        run(prepared)
    except bad_input as e:
        print_error(prog, first_line(e))
        return 2
    except TrainingError as e:
        print_error(prog, first_line(e))
        return 1
    except KeyboardInterrupt:
        print_error(prog, "interrupted; resume with --resume from the last checkpoint" if resumable else "interrupted")
        return 130
    return 0
