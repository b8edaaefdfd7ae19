"""Data: dataset layouts, the synthetic generator, the identity sampler and input pipelines.

Import the submodules directly (``cacl_dist.data.layouts``, ``.sampler``, ``.transforms``,
``.datasets``, ``.synthetic``, ``.view_params``, ``.pipelines.torchvision``, ``.pipelines.dali``);
this package imports nothing heavy.
"""
