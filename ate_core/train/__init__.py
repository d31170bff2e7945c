"""The training base: what every learning stage runs on, and the policy's own training.

``ate_train --config config/train_diffusion.yaml`` (:mod:`.cli`) pre-trains a policy, or
continues one from a checkpoint, with :func:`.trainer.train`: one loop (EMA, warm-up + cosine,
resume, torchrun) over the data sets and per-embodiment statistics of :mod:`.datasets`, with
training checkpoints (:mod:`.checkpoint`) in LeRobot's layout. The stages above build on it:
alignment (:mod:`ate_core.align`) reuses its configs, schedule and checkpoint folders, and
fine-tuning with guidance (:mod:`ate_core.steer`) runs this same loop with a guided loss. Every
stage's command line ends through :func:`.stage.run_stage` (one error line, one exit status).

Nothing here imports a later stage; inference loads checkpoints through
:mod:`ate_core.policy.pretrained` and needs no training code.
"""
