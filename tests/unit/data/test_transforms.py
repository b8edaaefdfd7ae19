"""Two-view augmentation: determinism, independence of the views, gray conversion, rates."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from cacl_dist.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    augment,
    eval_transform,
    load_image,
    to_gray,
    two_views,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
SMALL = dict(height=64, width=32)


def _noise_image(seed=0, height=80, width=40):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


def _unnormalise(x):
    return x * STD + MEAN


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_load_image_returns_uint8_rgb_chw(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.png")  # single channel -> RGB
    img = load_image(str(tmp_path / "a.png"))
    assert img.dtype == torch.uint8 and img.shape == (3, 6, 4)
    assert torch.equal(img, torch.from_numpy(pixels).permute(2, 0, 1))
    gray = load_image(str(tmp_path / "gray.png"))
    assert gray.shape == (3, 6, 4) and torch.equal(gray[0], gray[2])


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_image(str(bad))
    with pytest.raises(ValueError, match="missing.jpg"):
        load_image(str(tmp_path / "missing.jpg"))


def test_to_gray_uses_bt601_weights_on_any_batch_shape():
    img = torch.rand(2, 3, 5, 4, generator=_gen(0))
    gray = to_gray(img)
    expected = 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    assert gray.shape == img.shape
    for ch in range(3):
        torch.testing.assert_close(gray[:, ch], expected)


def test_augment_is_deterministic_per_generator_seed():
    img, params = _noise_image(), AugmentParams(**SMALL)
    a = augment(img, params, _gen(7), gray=False)
    b = augment(img, params, _gen(7), gray=False)
    assert a.shape == (3, 64, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert sum(not torch.equal(a, augment(img, params, _gen(s), gray=False)) for s in range(8, 18)) == 10


def test_two_views_deterministic_and_independent():
    img = _noise_image()
    params = AugmentParams(**SMALL)
    v1, v2 = two_views(img, params, seed=123)
    w1, w2 = two_views(img, params, seed=123)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert torch.equal(v1, augment(img, params, _gen(123), gray=False))
    # Without the gray conversion the two views still differ: their randomness is independent.
    colour = AugmentParams(**SMALL, gray_second_view=False)
    differ = sum(not torch.equal(*two_views(img, colour, seed=s)) for s in range(20))
    assert differ >= 18
    # Flip decisions of the two views agree about half of the time, not always.
    flip_only = AugmentParams(**SMALL, pad=0, erase_p=0.0, gray_second_view=False)
    plain = eval_transform(img, 64, 32)
    agree = 0
    for s in range(200):
        a, b = two_views(img, flip_only, seed=s)
        agree += torch.equal(a, plain) == torch.equal(b, plain)
    assert 0.35 < agree / 200 < 0.65


def test_gray_view_has_equal_channels_before_normalisation():
    img = _noise_image()
    params = AugmentParams(**SMALL, erase_p=0.0)
    for seed in range(5):
        view_rgb, view_gray = two_views(img, params, seed)
        raw = _unnormalise(view_gray)
        torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(raw[0], raw[2], atol=1e-5, rtol=0)
        assert not torch.allclose(_unnormalise(view_rgb)[0], _unnormalise(view_rgb)[1])


@pytest.mark.parametrize("gray", [False, True])
def test_without_randomness_augment_equals_eval_transform(gray):
    img = _noise_image(height=100, width=45)
    params = AugmentParams(**SMALL, flip_p=0.0, pad=0, erase_p=0.0)
    expected = eval_transform(img, 64, 32, gray=gray)
    assert torch.equal(augment(img, params, _gen(1), gray=gray), expected)
    view_rgb, view_gray = two_views(img, params, seed=4)
    assert torch.equal(view_rgb, eval_transform(img, 64, 32))
    assert torch.equal(view_gray, eval_transform(img, 64, 32, gray=True))


def test_flip_rate_and_direction():
    img = torch.zeros(3, 64, 32, dtype=torch.uint8)
    img[:, :, 16:] = 255  # right half white
    params = AugmentParams(**SMALL, pad=0, erase_p=0.0)
    flipped = 0
    for s in range(400):
        out = augment(img, params, _gen(s), gray=False)
        left_bright = bool(out[:, :, 0].mean() > out[:, :, -1].mean())
        flipped += left_bright
    assert abs(flipped / 400 - 0.5) < 0.07


def test_pad_and_crop_shift_the_image_within_the_padding():
    img = _noise_image(height=64, width=32)
    params = AugmentParams(**SMALL, flip_p=0.0, pad=4, erase_p=0.0)
    # Zero padding happens on the uint8 image, so the border is black before normalisation.
    padded = eval_transform(torch.nn.functional.pad(img, (4, 4, 4, 4)), 72, 40)
    offsets = set()
    for s in range(40):
        out = augment(img, params, _gen(s), gray=False)
        hits = [(top, left) for top in range(9) for left in range(9)
                if torch.allclose(out, padded[:, top : top + 64, left : left + 32], atol=1e-6)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 20  # offsets vary over the whole 9 x 9 range


def test_random_erasing_rate_area_and_aspect():
    img = torch.full((3, 128, 64), 200, dtype=torch.uint8)
    params = AugmentParams(height=128, width=64, flip_p=0.0, pad=0)
    erased, fractions, ratios = 0, [], []
    for s in range(400):
        out = augment(img, params, _gen(s), gray=False)
        mask = (out == 0).all(dim=0)
        if mask.any():
            erased += 1
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert mask.sum() == h * w  # a filled rectangle
            fractions.append(h * w / (128 * 64))
            ratios.append(h / w)
    assert abs(erased / 400 - 0.5) < 0.07
    assert 0.015 <= min(fractions) and max(fractions) <= 0.42
    assert np.mean(fractions) == pytest.approx(0.21, abs=0.04)
    assert 0.25 <= min(ratios) and max(ratios) <= 3.6
    assert min(ratios) < 0.6 and max(ratios) > 2.0


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="-3"):
        two_views(_noise_image(), AugmentParams(**SMALL), seed=-3)
