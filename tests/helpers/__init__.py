"""Helpers shared by the tests (nothing in cacl_dist uses them)."""
