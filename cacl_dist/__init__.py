"""cacl_dist: distributed training for unsupervised person re-identification with CACL."""

__version__ = "0.1.0"
