"""Unit tests of cacl_dist.config."""
