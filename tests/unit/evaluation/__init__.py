"""Unit tests of cacl_dist.evaluation."""
