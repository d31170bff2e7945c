"""ATE stage 2, *steer*: latent classifier guidance of a policy's denoising, attached from outside
the policy (:mod:`.guidance`), and fine-tuning with it: ``ate_finetune`` (:mod:`.cli`,
:mod:`.finetune`) runs the training loop of :mod:`ate_core.train` with the guided loss and writes
how the weights were shaped into every checkpoint (:mod:`.record`), which inference reads back."""
