"""ATE stage 2, *steer*: latent classifier guidance of a policy's denoising (fine-tuning loss and
optional inference-time guidance), attached from outside the policy."""
