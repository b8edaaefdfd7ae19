"""Unit tests of cacl_dist.clustering."""
