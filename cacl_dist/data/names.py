"""The names of the data choices, defined once for the config and the data package.

This module imports nothing, so the config can take its allowed values from here without
loading torch.
"""

INTERPOLATIONS = ("bilinear", "bicubic")
"""Resize filters (antialiased when shrinking): ``bilinear``, or ``bicubic`` as the released code resizes."""

ERASE_RATIO_SAMPLINGS = ("log_uniform", "uniform")
"""How random erasing draws the aspect ratio h/w of its rectangle within its range: uniform in the
logarithm (equal odds for r and 1/r), or uniform in the ratio itself (the released code)."""

ERASE_FILLS = ("zero", "imagenet_mean")
"""What random erasing writes into the normalised tensor: 0 (the mean colour of the normalisation), or
the per-channel numbers 0.485, 0.456, 0.406 (the released code, which writes the ImageNet means there)."""

SAMPLERS = ("cacl", "released")
"""Identity samplers, see :mod:`cacl_dist.data.sampler`."""
