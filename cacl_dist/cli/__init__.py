"""Command-line entries: train, evaluate, export, extract, search, visualize, report.

Each stays reachable as ``python -m cacl_dist.<entry>``."""
