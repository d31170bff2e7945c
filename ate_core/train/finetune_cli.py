"""``ate_finetune``: fine-tune a pre-trained policy on a new robot, plainly or steered by ATE.

::

    ate_finetune --config config/finetune_flow.yaml --method ate \\
        --init-from outputs/train_flow/checkpoints/last --vae outputs/align_ada \\
        --set dataset.roots=[data/robot_demos] --output-dir outputs/flow_ate
    ate_finetune --config config/finetune_flow.yaml --method plain --init-from CKPT --output-dir outputs/flow_plain
    torchrun --nproc_per_node 2 -m ate_core.train.finetune_cli --config config/finetune_diffusion.yaml ...

A bad config, checkpoint, VAE or dataset ends in one line naming the file and the key, and exit
status 2; a run that fails while training exits 1 (as ``ate_train``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ate_core.train.cli import first_line, is_main_process, print_error

__all__ = ["main", "build_parser"]

PROG = "ate_finetune"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune a pre-trained diffusion / flow policy on new demonstrations, plainly or with "
                    "ATE latent guidance. Run under torchrun for several GPUs.")
    p.add_argument("--config", required=True, help="fine-tuning YAML (see config/finetune_flow.yaml)")
    p.add_argument("--method", choices=("plain", "ate"), help="same as --set method=... (the config's default: ate)")
    p.add_argument("--init-from", metavar="CKPT", help="the pre-trained checkpoint (its model config and weights)")
    p.add_argument("--vae", metavar="VAE",
                   help="the adaptation VAE checkpoint from ate_align --stage ada (same as --set ate.vae=...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, YAML-parsed (repeatable): --set steps=2000 "
                        "--set dataset.roots=[data/a] --set ate.scale=1.0")
    p.add_argument("--output-dir", help="same as --set output_dir=DIR")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    return p


def _error(message: str) -> None:
    print_error(PROG, message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from ate_core.config import ConfigError
    from ate_core.policy.pretrained import CheckpointError
    from ate_core.data.spaces import ActionSpaceError, NormStatsError
    from ate_core.train.config import parse_overrides
    from ate_core.train.finetune import finetune, load_finetune_config
    from ate_core.train.trainer import TrainingError, check_policy_section

    try:
        overrides = parse_overrides(args.overrides)
        for key, value in (("method", args.method), ("init_from", args.init_from), ("ate.vae", args.vae),
                           ("output_dir", args.output_dir)):
            if value:
                overrides[key] = value
        if args.resume:
            overrides["resume"] = True
        cfg = load_finetune_config(args.config, overrides, override_source="command line")
        check_policy_section(cfg, source=args.config)
    except (ConfigError, CheckpointError, TrainingError) as e:
        _error(first_line(e))
        return 2
    from ate_core.data.episode import EpisodeFormatError

    try:
        result = finetune(cfg, progress=not args.no_progress, source=args.config)
    except (ConfigError, CheckpointError, ActionSpaceError, EpisodeFormatError, NormStatsError) as e:
        _error(first_line(e))
        return 2
    except TrainingError as e:
        _error(first_line(e))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; resume with --resume from the last checkpoint")
        return 130
    if is_main_process():
        from ate_core.train.trainer import LOSS_PLOT_FILE

        print(f"method: {cfg.method}")
        print(f"checkpoint: {result.last_checkpoint}")
        print(f"loss curve: {result.output_dir / LOSS_PLOT_FILE}")
        if result.losses:
            print(f"final loss: {result.losses[-1]:.6g} after {result.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
