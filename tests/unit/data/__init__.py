"""Unit tests of cacl_dist.data."""
