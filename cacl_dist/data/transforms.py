"""CACL's two-view augmentation on tensors, driven by an explicit per-sample seed.

No global random state is touched: every random choice comes from a ``torch.Generator``
seeded from the sample's augmentation seed, so a sample looks the same whichever worker,
rank or run decodes it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cacl_dist.data.image_files import DEEP_SAMPLES, not_a_regular_file
from cacl_dist.data.names import ERASE_FILLS, ERASE_RATIO_SAMPLINGS, INTERPOLATIONS
from cacl_dist.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
_LUMA = torch.tensor(LUMA_WEIGHTS).view(3, 1, 1)
_INTERPOLATION_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@dataclass
class AugmentParams:
    """Settings of the training augmentation (docs/method.md section 2).

    ``erase_scale``: range of the erased area as a fraction of the image; ``erase_ratio``: range
    of its aspect h / w, drawn as ``erase_ratio_sampling`` says; ``erase_fill``: what the
    rectangle is set to (see :mod:`cacl_dist.data.names`); ``interpolation``: the resize filter.
    """

    height: int = 256
    width: int = 128
    flip_p: float = 0.5
    pad: int = 10
    erase_p: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    gray_second_view: bool = True
    erase_ratio_sampling: str = "log_uniform"
    erase_fill: str = "zero"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for name, value, allowed in (("erase_ratio_sampling", self.erase_ratio_sampling, ERASE_RATIO_SAMPLINGS),
                                     ("erase_fill", self.erase_fill, ERASE_FILLS),
                                     ("interpolation", self.interpolation, INTERPOLATIONS)):
            if value not in allowed:
                raise ValueError(f"augmentation {name} {value!r} is not one of {', '.join(allowed)}")

    def erase_values(self) -> tuple[float, float, float]:
        """The per-channel values an erased rectangle gets in the normalised tensor."""
        return IMAGENET_MEAN if self.erase_fill == "imagenet_mean" else (0.0, 0.0, 0.0)

    def aspect(self, u):
        """Aspect ratios h / w from uniforms ``u`` in [0, 1) (a float or a NumPy array)."""
        lo, hi = self.erase_ratio
        if self.erase_ratio_sampling == "uniform":
            return lo + u * (hi - lo)
        log_aspect = math.log(lo) + u * (math.log(hi) - math.log(lo))
        return np.exp(log_aspect) if isinstance(u, np.ndarray) else math.exp(log_aspect)


def load_image(path: str) -> torch.Tensor:
    """Decode ``path`` into a uint8 RGB tensor of shape 3 x H x W, as stored (EXIF orientation is not applied).

    A regular file only (a FIFO would block); a PNG of 16 bits per channel is refused, as the image
    check refuses it for DALI.
    """
    try:
        if (why := not_a_regular_file(os.stat(path).st_mode)) is not None:
            raise UserError(why)
        with Image.open(path) as image:
            deep = image.format == "PNG" and any(";16" in str(tile[3]) for tile in image.tile)
            array = None if deep else np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(
            f"cannot read the image {path}: {err}; check that the file exists and is a valid image"
        ) from err
    if array is None:
        raise UserError(f"cannot read the image {path}: the PNG has {DEEP_SAMPLES.format(bits=16)}")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """Luma (0.299 R + 0.587 G + 0.114 B) of a float ... x 3 x H x W image, replicated to 3 channels."""
    luma = (img * _LUMA.to(img.dtype)).sum(dim=-3, keepdim=True)
    return luma.expand(*img.shape).contiguous()


def normalize(img: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of a float ... x 3 x H x W image in [0, 1]."""
    return (img - _MEAN.to(img.dtype)) / _STD.to(img.dtype)


def _resize(img: torch.Tensor, height: int, width: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize to height x width with the named filter (antialiased); an image of that size is returned as is."""
    if tuple(img.shape[-2:]) == (height, width):
        return img
    return TF.resize(img, [height, width], interpolation=_INTERPOLATION_MODES[interpolation], antialias=True)


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator))


@dataclass
class ViewParams:
    """The random choices of one training view, in output pixel coordinates.

    ``top``/``left`` index the zero-padded image (0 .. 2 * pad); ``erase`` is the erased
    rectangle ``(top, left, height, width)`` or ``None``.
    """

    flip: bool
    top: int
    left: int
    erase: tuple[int, int, int, int] | None


def _erase_box(params: AugmentParams, generator: torch.Generator) -> tuple[int, int, int, int] | None:
    """A random-erasing rectangle (area / aspect sampling, up to 100 tries), or None."""
    height, width = params.height, params.width
    area = height * width
    for _ in range(100):
        target = area * (params.erase_scale[0] + _rand(generator) * (params.erase_scale[1] - params.erase_scale[0]))
        aspect = params.aspect(_rand(generator))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            return _randint(generator, height - h + 1), _randint(generator, width - w + 1), h, w
    return None


def draw_view_params(params: AugmentParams, generator: torch.Generator) -> ViewParams:
    """The random choices of one view, drawn from ``generator`` (flip, crop offsets, erasing)."""
    flip = _rand(generator) < params.flip_p
    top = left = 0
    if params.pad > 0:
        top = _randint(generator, 2 * params.pad + 1)
        left = _randint(generator, 2 * params.pad + 1)
    erase = _erase_box(params, generator) if _rand(generator) < params.erase_p else None
    return ViewParams(flip=flip, top=top, left=left, erase=erase)


def apply_view(img: torch.Tensor, params: AugmentParams, view: ViewParams, gray: bool) -> torch.Tensor:
    """Apply the choices ``view`` to a uint8 3 x H x W image: float 3 x height x width, normalised.

    Resize (``params.interpolation``, antialiased) -> horizontal flip -> zero padding of ``pad``
    and the crop at (``top``, ``left``) back to the size -> [0, 1] -> grayscale if ``gray`` ->
    normalisation -> random erasing (filled per channel with ``params.erase_values()``).
    """
    img = _resize(img, params.height, params.width, params.interpolation)
    if view.flip:
        img = img.flip(-1)
    if params.pad > 0:
        img = F.pad(img, (params.pad, params.pad, params.pad, params.pad))
        img = img[..., view.top : view.top + params.height, view.left : view.left + params.width]
    out = img.float() / 255.0
    if gray:
        out = to_gray(out)
    out = normalize(out)
    if view.erase is not None:
        top, left, h, w = view.erase
        fill = torch.tensor(params.erase_values(), dtype=out.dtype).view(3, 1, 1)
        out[..., top : top + h, left : left + w] = fill  # out is a fresh tensor from normalize()
    return out.contiguous()


def augment(img: torch.Tensor, params: AugmentParams, generator: torch.Generator, gray: bool) -> torch.Tensor:
    """One training view of a uint8 3 x H x W image: float 3 x height x width, normalised.

    Flip with ``flip_p``, a random crop of the zero-padded image, random erasing with
    ``erase_p``; see :func:`draw_view_params` and :func:`apply_view`.
    """
    return apply_view(img, params, draw_view_params(params, generator), gray)


def second_view_seed(seed: int) -> int:
    """The seed of the second view's generator, derived from (and independent of) ``seed``."""
    if seed < 0:
        raise ValueError(f"augmentation seed {seed} must be non-negative")
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def two_views(img: torch.Tensor, params: AugmentParams, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(view_rgb, view_2) of a uint8 image: independent randomness, view 2 gray iff ``gray_second_view``."""
    view2_seed = second_view_seed(seed)
    img = _resize(img, params.height, params.width, params.interpolation)  # shared by both views
    view_rgb = augment(img, params, torch.Generator().manual_seed(seed), gray=False)
    view_2 = augment(img, params, torch.Generator().manual_seed(view2_seed), gray=params.gray_second_view)
    return view_rgb, view_2


def eval_transform(img: torch.Tensor, height: int, width: int, gray: bool = False,
                   interpolation: str = "bilinear") -> torch.Tensor:
    """Evaluation / feature-extraction input: resize (``interpolation``), optional grayscale, normalisation."""
    out = _resize(img, height, width, interpolation).float() / 255.0
    if gray:
        out = to_gray(out)
    return normalize(out).contiguous()
