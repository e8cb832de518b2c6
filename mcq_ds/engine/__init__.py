"""Training engine: DeepSpeed loop, checkpoints and resume, experiment tracking."""
