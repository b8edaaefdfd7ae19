"""Unit tests of launch/ (SLURM submission through submitit)."""
