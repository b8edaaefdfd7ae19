"""Unit tests of cacl_dist.models."""
