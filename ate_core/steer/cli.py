"""``ate_finetune``: fine-tune a pre-trained policy on a new robot, plainly or steered by ATE.

::

    ate_finetune --config config/finetune_flow.yaml --method ate \\
        --init-from outputs/train_flow/checkpoints/last --vae outputs/align_ada \\
        --set dataset.roots=[data/robot_demos] --output-dir outputs/flow_ate
    ate_finetune --config config/finetune_flow.yaml --method plain --init-from CKPT --output-dir outputs/flow_plain
    torchrun --nproc_per_node 2 -m ate_core.steer.cli --config config/finetune_diffusion.yaml ...

A bad config, checkpoint, VAE or dataset ends in one line naming the file and the key, and exit
status 2; a run that fails while training exits 1 (as every stage, :mod:`ate_core.train.stage`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ate_core.train.cli import add_run_arguments, print_result, run_overrides
from ate_core.train.stage import is_main_process, run_stage

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
    add_run_arguments(p, "--set steps=2000 --set dataset.roots=[data/a] --set ate.scale=1.0")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from ate_core.steer.finetune import FinetuneConfig, finetune, load_finetune_config
    from ate_core.train.trainer import check_policy_section

    def prepare() -> FinetuneConfig:
        overrides = run_overrides(args, method=args.method, init_from=args.init_from, **{"ate.vae": args.vae})
        cfg = load_finetune_config(args.config, overrides, override_source="command line")
        check_policy_section(cfg, source=args.config)
        return cfg

    def run(cfg: FinetuneConfig) -> None:
        result = finetune(cfg, progress=not args.no_progress, source=args.config)
        if is_main_process():
            print(f"method: {cfg.method}")
        print_result(result)

    return run_stage(PROG, prepare, run, resumable=True)


if __name__ == "__main__":
    sys.exit(main())
