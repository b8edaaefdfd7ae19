"""The "torchvision" pipeline: PIL decoding and tensor augmentation in DataLoader workers.

It runs everywhere (CPU or GPU hosts); a DALI pipeline with the same builder signatures can sit
beside it.
"""

from cacl_dist.data.datasets import build_eval_loader, build_train_loader

NAME = "torchvision"

__all__ = ["NAME", "build_eval_loader", "build_train_loader"]
