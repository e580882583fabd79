"""The workflow driver (`sample`, `resume`) and the pieces it composes: typed run
settings, the per-chain compiled loop, devices, progress, warm-up, checkpoints."""
