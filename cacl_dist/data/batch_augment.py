"""The two-view augmentation of :mod:`cacl_dist.data.transforms` as batched tensor operations.

The "torch-gpu" pipeline runs these on whole batches on the training device (or on the CPU):
the same operations in the same order as :func:`~cacl_dist.data.transforms.apply_view` and
:func:`~cacl_dist.data.transforms.eval_transform`, with each sample's choices (flip, crop offsets,
erasing rectangle) given as rows of a tensor instead of a :class:`~cacl_dist.data.transforms.ViewParams`:

    resize (antialiased, ``interpolation``) -> horizontal flip -> crop of the zero-padded image
    -> [0, 1] -> ITU-R 601 luma (gray view) -> ImageNet normalisation -> random erasing.

Flip and crop are one gather of uint8 pixels, so they move values without changing them. On the
CPU the resize is torchvision's (``torchvision.transforms.functional.resize``) on the same uint8
images, so every pixel equals the torchvision pipeline's; on CUDA torchvision resizes in float32 and
rounds back to uint8, which moves some pixels by one level (measured in tests/unit/data/test_torch_gpu.py).
No function here reads a value back to the host.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cacl_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, LUMA_WEIGHTS, AugmentParams

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}

#: Columns of one view's choices: flip (0/1), crop top and left in the padded image, erasing
#: rectangle top, left, height, width (height 0: not erased).
CHOICE_COLUMNS = ("flip", "top", "left", "erase_top", "erase_left", "erase_height", "erase_width")


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` without a host wait: pinned first when ``device`` is CUDA."""
    tensor = torch.as_tensor(array)
    if device.type != "cuda":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(luma weights, mean, std) as 3 x 1 x 1 float32 tensors on ``device``; copied there once."""
    return tuple(torch.tensor(v, dtype=torch.float32).view(3, 1, 1).to(device)
                 for v in (LUMA_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD))


def resize_batch(images: Sequence[torch.Tensor], height: int, width: int, interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 images (3 x h_i x w_i, one device) -> uint8 B x 3 x height x width, each resized antialiased.

    Images of one size are resized in one call; an image already of the size is kept as it is (as
    :func:`cacl_dist.data.transforms.eval_transform` keeps it).
    """
    if not images:
        raise ValueError("resize_batch needs at least one image")
    device = images[0].device
    groups: dict[tuple[int, int], list[int]] = {}
    for slot, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(slot)
    resized = []
    for size, slots in groups.items():
        stack = torch.stack([images[i] for i in slots])
        if size != (height, width):
            stack = TF.resize(stack, [height, width], interpolation=_MODES[interpolation], antialias=True)
        resized.append(stack)
    if len(groups) == 1:
        return resized[0]
    order = np.argsort(np.concatenate([np.asarray(s) for s in groups.values()]), kind="stable")
    return torch.cat(resized).index_select(0, to_device(order, device))


def flip_crop(images: torch.Tensor, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor, pad: int) -> torch.Tensor:
    """Per sample: mirror when ``flip``, zero-pad by ``pad``, crop at (``top``, ``left``) back to the size.

    ``images`` B x C x H x W (any dtype); ``flip``, ``top``, ``left`` length-B tensors on its device.
    One gather: column ``j`` of a flipped crop is column ``W + 2 pad - 1 - (left + j)`` of the padded image.
    """
    b, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    rows = top.view(b, 1) + torch.arange(height, device=device)
    cols = left.view(b, 1) + torch.arange(width, device=device)
    cols = torch.where(flip.view(b, 1).bool(), width + 2 * pad - 1 - cols, cols)
    batch = torch.arange(b, device=device).view(b, 1, 1)
    gathered = padded.permute(0, 2, 3, 1)[batch, rows.view(b, height, 1), cols.view(b, 1, width)]
    return gathered.permute(0, 3, 1, 2)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Luma of float B x 3 x H x W images, replicated to 3 channels (as transforms.to_gray)."""
    luma_weights = _constants(images.device)[0]
    luma = (images * luma_weights).sum(dim=-3, keepdim=True)
    return luma.expand(*images.shape)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of float B x 3 x H x W images in [0, 1] (as transforms.normalize)."""
    _, mean, std = _constants(images.device)
    return (images - mean) / std


def erase_(images: torch.Tensor, boxes: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """Set rectangle ``boxes[i] = (top, left, height, width)`` of image ``i`` to ``fill`` (one value per channel).

    In place, one masked fill per channel over the batch; a box of height 0 erases nothing.
    """
    height, width = images.shape[-2:]
    device = images.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    top, left, h, w = (boxes[:, k : k + 1] for k in range(4))
    inside = (((rows >= top) & (rows < top + h))[:, :, None]) & (((cols >= left) & (cols < left + w))[:, None, :])
    for channel, value in enumerate(fill):
        images[:, channel].masked_fill_(inside, value)
    return images


def view_batch(resized: torch.Tensor, choices: torch.Tensor, params: AugmentParams, gray: bool) -> torch.Tensor:
    """One training view of every image: float32 B x 3 x H x W, from uint8 ``resized`` and B x 7 ``choices``."""
    out = flip_crop(resized, choices[:, 0], choices[:, 1], choices[:, 2], params.pad).float() / 255.0
    if gray:
        out = to_gray(out)
    out = normalise(out).contiguous()
    return erase_(out, choices[:, 3:7], params.erase_values())


def eval_batch(resized: torch.Tensor, gray: bool) -> torch.Tensor:
    """Evaluation input of every image: float32 B x 3 x H x W, [0, 1] -> optional luma -> normalised."""
    out = resized.float() / 255.0
    if gray:
        out = to_gray(out)
    return normalise(out).contiguous()


__all__ = ["CHOICE_COLUMNS", "erase_", "eval_batch", "flip_crop", "normalise", "resize_batch", "to_device",
           "to_gray", "view_batch"]
