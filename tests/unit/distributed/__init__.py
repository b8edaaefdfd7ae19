"""Unit tests of cacl_dist.distributed (single process)."""
