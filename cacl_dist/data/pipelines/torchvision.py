"""The "torchvision" pipeline: PIL decoding and tensor augmentation in DataLoader workers.

It runs everywhere (CPU or GPU hosts); :mod:`cacl_dist.data.pipelines.dali` is the DALI
counterpart with the same output contract.
"""

from cacl_dist.data.datasets import build_eval_loader, build_train_loader

NAME = "torchvision"

__all__ = ["NAME", "build_eval_loader", "build_train_loader"]
