"""The augmentation choices behind config keys: resize filter, erasing aspect sampling and fill
(docs/method.md section 2; the released code's values are bicubic, uniform aspect, ImageNet-mean fill)."""

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cacl_dist.config import ConfigError, load_config
from cacl_dist.data.factory import augment_params
from cacl_dist.data.transforms import (IMAGENET_MEAN, AugmentParams, ViewParams, _erase_box, apply_view,
                                       eval_transform, two_views)
from cacl_dist.data.view_params import draw_view_batch
from cacl_dist.evaluation.extract import ExtractionSettings

RELEASED = dict(erase_ratio=(0.3, 1 / 0.3), erase_ratio_sampling="uniform", erase_fill="imagenet_mean",
                interpolation="bicubic")


def _image(seed=0, height=80, width=40):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


def test_aspect_sampling_maps_uniforms_to_the_range():
    log_uniform = AugmentParams(erase_ratio=(0.25, 4.0))
    uniform = AugmentParams(erase_ratio=(0.25, 4.0), erase_ratio_sampling="uniform")
    assert log_uniform.aspect(0.5) == pytest.approx(1.0) and uniform.aspect(0.5) == pytest.approx(2.125)
    u = np.array([0.0, 0.25, 0.999])
    np.testing.assert_allclose(uniform.aspect(u), 0.25 + u * 3.75)
    np.testing.assert_allclose(log_uniform.aspect(u), 0.25 * 16.0 ** u)


@pytest.mark.parametrize("sampling, tall_share", [("log_uniform", (0.5, 0.65)), ("uniform", (0.75, 0.88))])
def test_both_pipelines_draw_the_aspect_as_configured(sampling, tall_share):
    # Rectangles taller than wide: 1/2 of the draws under log-uniform, 0.77 under uniform on
    # (0.3, 3.33); both a little more, since tall rectangles fit a 2:1 image more often.
    params = AugmentParams(height=256, width=128, erase_p=1.0, erase_ratio=(0.3, 1 / 0.3),
                           erase_ratio_sampling=sampling)
    boxes = draw_view_batch(params, np.arange(20000), 0).erase
    generator = torch.Generator().manual_seed(0)
    torch_boxes = np.array([_erase_box(params, generator) for _ in range(3000)])
    for h, w in ((boxes[:, 2], boxes[:, 3]), (torch_boxes[:, 2], torch_boxes[:, 3])):
        assert tall_share[0] < np.mean(h > w) < tall_share[1]


@pytest.mark.parametrize("gray", [False, True])
def test_erase_fill_writes_the_imagenet_means_into_the_normalised_view(gray):
    img = _image()
    view = ViewParams(flip=False, top=0, left=0, erase=(5, 3, 10, 7))
    zero = apply_view(img, AugmentParams(height=64, width=32, pad=0), view, gray=gray)
    means = apply_view(img, AugmentParams(height=64, width=32, pad=0, erase_fill="imagenet_mean"), view, gray=gray)
    assert torch.equal(zero[:, 5:15, 3:10], torch.zeros(3, 10, 7))
    for channel, value in enumerate(IMAGENET_MEAN):
        assert torch.equal(means[channel, 5:15, 3:10], torch.full((10, 7), value))
    outside = torch.ones(64, 32, dtype=torch.bool)
    outside[5:15, 3:10] = False
    assert torch.equal(zero[:, outside], means[:, outside])


def test_bicubic_resize_in_training_views_and_extraction():
    img = _image(height=90, width=45)
    bicubic = eval_transform(img, 64, 32, interpolation="bicubic")
    expected = TF.resize(img, [64, 32], interpolation=InterpolationMode.BICUBIC, antialias=True).float() / 255.0
    torch.testing.assert_close(bicubic, (expected - torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
                               / torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1))
    assert not torch.equal(bicubic, eval_transform(img, 64, 32))
    plain = AugmentParams(height=64, width=32, flip_p=0.0, pad=0, erase_p=0.0, interpolation="bicubic")
    view_rgb, _ = two_views(img, plain, seed=3)
    assert torch.equal(view_rgb, bicubic)


def test_config_keys_reach_the_augmentation_and_the_extraction():
    cfg = load_config(None, ["data.resize_interpolation=bicubic", "augment.erase_area_min=0.05",
                             "augment.erase_area_max=0.3", "augment.erase_ratio_min=0.3",
                             "augment.erase_ratio_max=3.3333333333333335", "augment.erase_ratio_sampling=uniform",
                             "augment.erase_fill=imagenet_mean"])
    params = augment_params(cfg.data, cfg.augment)
    assert params.erase_scale == (0.05, 0.3) and params.erase_ratio == (0.3, 1 / 0.3)
    assert (params.erase_ratio_sampling, params.erase_fill, params.interpolation) == ("uniform", "imagenet_mean",
                                                                                      "bicubic")
    assert ExtractionSettings.from_config(cfg, torch.device("cpu")).interpolation == "bicubic"
    defaults = load_config(None)
    default = augment_params(defaults.data, defaults.augment)
    assert (default.erase_scale, default.erase_ratio, default.erase_ratio_sampling, default.erase_fill,
            default.interpolation) == ((0.02, 0.4), (0.3, 3.3), "log_uniform", "zero", "bilinear")


@pytest.mark.parametrize("override, key", [
    ("augment.erase_area_min=0.5", "erase_area_min"),
    ("augment.erase_area_max=1.5", "erase_area_max"),
    ("augment.erase_ratio_min=0", "erase_ratio_min"),
    ("augment.erase_ratio_max=0.2", "erase_ratio_max"),
    ("augment.erase_fill=noise", "erase_fill"),
    ("data.resize_interpolation=nearest", "resize_interpolation"),
])
def test_config_rejects_bad_augmentation_values(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_augment_params_reject_unknown_choices():
    for kwargs in (dict(erase_fill="mean"), dict(erase_ratio_sampling="normal"), dict(interpolation="area")):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            AugmentParams(**kwargs)
    assert AugmentParams(**RELEASED).erase_values() == IMAGENET_MEAN
