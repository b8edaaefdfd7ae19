"""Cluster launchers: SLURM through submitit (`python -m launch.slurm`).

This package is the only place that knows about SLURM; training itself only reads the
torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""
