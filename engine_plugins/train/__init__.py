"""Training loops (progress bars, checkpoints, seeded determinism)."""
