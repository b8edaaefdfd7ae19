"""The config sections of the data room: the dataset and its input pipelines, the synthetic
generator, the two-view augmentation.

Defined (with the docstrings that ``--describe-config`` prints) beside the code that reads them;
:mod:`cacl_dist.config.schema` composes them into the run's Config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cacl_dist.data.layouts import DATASET_NAMES
from cacl_dist.data.names import ERASE_FILLS, ERASE_RATIO_SAMPLINGS, INTERPOLATIONS
from cacl_dist.data.pipelines import PIPELINES

PIPELINE_CHOICES = ("auto", *PIPELINES)


@dataclass
class SyntheticConfig:
    num_train_ids: int = 60
    """Identities in the synthetic training split."""
    num_test_ids: int = 40
    """Identities in the synthetic query/gallery split (disjoint from training)."""
    images_per_id: int = 12
    """Images drawn per identity."""
    num_cameras: int = 4
    """Cameras; each applies its own colour cast and brightness."""
    height: int = 128
    """Height of the written images in pixels."""
    width: int = 64
    """Width of the written images in pixels."""
    seed: int = 0
    """Seed of the generator (the same seed always writes the same files)."""


@dataclass
class DataConfig:
    dataset: Literal[DATASET_NAMES] = "synthetic"
    """Dataset layout. 'folder' is a plain folder of unlabelled crops (training only); 'custom' reads
    list files train.txt (+ query.txt, gallery.txt to evaluate) of 'path pid camera' lines under root."""
    root: str = "data_cache/synthetic"
    """Dataset root folder. For 'synthetic' it is generated there when missing; for 'custom' it holds the lists."""
    height: int = 256
    """Network input height in pixels."""
    width: int = 128
    """Network input width in pixels."""
    resize_interpolation: Literal[INTERPOLATIONS] = "bilinear"
    """Filter that resizes every image to height x width (training views, memory initialisation, evaluation;
    antialiased when shrinking): 'bilinear', or 'bicubic' as the released code does."""
    num_workers: int = 4
    """DataLoader worker processes per rank (0 loads in the main process); DALI threads (at least 1)."""
    pipeline: Literal[PIPELINE_CHOICES] = "auto"
    ("Training input pipeline: 'dali' (NVIDIA DALI on the GPU, or CPU-only; `pip install cacl_dist[dali]`), "
     "'torch-gpu' (workers read the JPEG bytes; torchvision's nvJPEG decoder and batched tensor ops augment "
     "on the training device, or on the CPU), 'torchvision' (PIL in DataLoader workers), or 'auto': on a GPU "
     "dali when it runs there, else torch-gpu, else torchvision; on the CPU dali when DALI is installed, "
     "else torchvision.")
    eval_pipeline: Literal[PIPELINE_CHOICES] = "torchvision"
    ("Pipeline of feature extraction (memory initialisation, evaluation; resize + normalise only): "
     "dali, torch-gpu, torchvision, or auto as for data.pipeline.")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings, used only when dataset is 'synthetic'."""


@dataclass
class AugmentConfig:
    flip_p: float = 0.5
    """Probability of a horizontal flip, per view."""
    pad: int = 10
    """Zero padding in pixels before the random crop back to the input size."""
    erase_p: float = 0.5
    """Probability of random erasing, per view."""
    erase_area_min: float = 0.02
    """Smallest erased area, as a fraction of the image (the rectangle's area is uniform in [min, max])."""
    erase_area_max: float = 0.4
    """Largest erased area, as a fraction of the image."""
    erase_ratio_min: float = 0.3
    """Smallest aspect ratio h / w of the erased rectangle (up to 100 draws until one fits)."""
    erase_ratio_max: float = 3.3
    """Largest aspect ratio h / w of the erased rectangle (the released code: 1 / 0.3 = 3.3333333333333335)."""
    erase_ratio_sampling: Literal[ERASE_RATIO_SAMPLINGS] = "log_uniform"
    """How the aspect ratio is drawn in [min, max]: 'log_uniform' (r and 1/r equally likely) or 'uniform'
    (the released code)."""
    erase_fill: Literal[ERASE_FILLS] = "zero"
    """Value of the erased pixels in the normalised tensor: 'zero' (the ImageNet mean colour), or
    'imagenet_mean': the numbers 0.485 / 0.456 / 0.406 per channel, as the released code writes them."""
    gray_second_view: bool = True
    """Convert the second view to grayscale (CACL). False gives a plain two-RGB-view ablation."""


__all__ = ["AugmentConfig", "DataConfig", "PIPELINE_CHOICES", "SyntheticConfig"]
