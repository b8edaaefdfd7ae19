"""Data: dataset layouts, the synthetic generator, the identity sampler, epoch plans and input pipelines.

Import the submodules directly (``cacl_dist.data.layouts``, ``.sampler``, ``.epoch_plan``,
``.transforms``, ``.batch_augment``, ``.datasets``, ``.synthetic``, ``.view_params``, ``.factory``, and
``.pipelines`` with its registry of the ``torchvision``, ``dali`` and ``torch-gpu`` pipelines); this package
imports nothing heavy. Nothing in it talks to other processes: callers gather and wait.
"""
