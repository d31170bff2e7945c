"""ATE stage 1, *align*: action-chunk Info-VAEs that map a new robot's chunks into the modes of
the pre-training latent space (see ``ate_core.steer`` for how that space steers a policy)."""
