"""Training: state, step, losses, checkpoints, summaries, validation, loop."""
