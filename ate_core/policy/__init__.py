"""Policy-side data processing shared by training, inference and replay (unified actions, normalisation)."""
