"""The ``lift3d`` command and everything that launches a run: CLI, SLURM launch check and pre-emption, signals,
DeepSpeed, W&B tracking, the demo."""
