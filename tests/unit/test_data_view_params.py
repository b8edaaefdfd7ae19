"""Batch-drawn augmentation choices (the DALI pipeline's randomness) and the pipeline choice."""

import numpy as np
import pytest

from cacl_dist.config import ConfigError, load_config
from cacl_dist.data import factory
from cacl_dist.data.pipelines import dali as dali_pipeline
from cacl_dist.data.transforms import AugmentParams
from cacl_dist.data.view_params import batch_generator, draw_view_batch

N = 20000  # a rate p is estimated with std <= 0.5 / sqrt(N) = 0.0035


def test_choices_follow_the_configured_rates():
    params = AugmentParams(height=64, width=32, flip_p=0.3, pad=4, erase_p=0.7)
    choice = draw_view_batch(params, np.random.default_rng(0), N)
    assert abs(choice.flip.mean() - 0.3) < 0.02  # > 5 sigma
    erased = choice.erase[:, 2] > 0
    assert abs(erased.mean() - 0.7) < 0.02
    for offsets in (choice.top, choice.left):  # uniform on 0 .. 2 * pad
        counts = np.bincount(offsets, minlength=9)
        assert counts.size == 9 and np.all(np.abs(counts / N - 1 / 9) < 0.012)  # std 0.0022


def test_erasing_boxes_lie_inside_and_follow_area_and_aspect_bounds():
    params = AugmentParams(height=64, width=32, erase_p=1.0)
    choice = draw_view_batch(params, np.random.default_rng(1), 4000)
    top, left, h, w = choice.erase.T
    assert np.all((h > 0) & (h < 64) & (w > 0) & (w < 32))
    assert np.all((top >= 0) & (top + h <= 64) & (left >= 0) & (left + w <= 32))
    area = h * w / (64 * 32)
    assert area.min() > 0.01 and area.max() < 0.45  # scale (0.02, 0.4) up to rounding
    assert 0.15 < np.median(area) < 0.3
    # Every top offset is possible: the smallest and largest positions both occur.
    assert top.min() == 0 and np.any(top + h == 64)


def test_switched_off_randomness_draws_nothing():
    params = AugmentParams(height=32, width=16, flip_p=0.0, pad=0, erase_p=0.0)
    choice = draw_view_batch(params, np.random.default_rng(2), 500)
    assert not choice.flip.any() and not choice.top.any() and not choice.left.any() and not choice.erase.any()


def test_batch_generator_is_deterministic_and_separates_views_and_batches():
    seeds = np.arange(10, 26)
    params = AugmentParams()
    a = draw_view_batch(params, batch_generator(seeds, 0), 16)
    b = draw_view_batch(params, batch_generator(seeds, 0), 16)
    other_view = draw_view_batch(params, batch_generator(seeds, 1), 16)
    other_batch = draw_view_batch(params, batch_generator(seeds + 1, 0), 16)
    assert np.array_equal(a.erase, b.erase) and np.array_equal(a.top, b.top)
    assert not np.array_equal(a.top, other_view.top) and not np.array_equal(a.top, other_batch.top)
    with pytest.raises(ValueError, match="non-negative"):
        batch_generator(np.array([-1]), 0)


def test_view_converts_one_sample_to_view_params():
    choice = draw_view_batch(AugmentParams(erase_p=1.0), np.random.default_rng(3), 4)
    view = choice.view(2)
    assert view.erase == tuple(int(v) for v in choice.erase[2]) and view.flip == bool(choice.flip[2])


@pytest.fixture
def no_dali(monkeypatch):
    monkeypatch.setattr(dali_pipeline, "dali_available", lambda: False)
    factory.resolve_pipeline.cache_clear()
    yield
    factory.resolve_pipeline.cache_clear()


def test_auto_falls_back_to_torchvision_and_explicit_dali_names_the_extra(no_dali, caplog):
    with caplog.at_level("INFO", logger="cacl_dist"):
        assert factory.resolve_pipeline("auto") == "torchvision"
    assert "pip install cacl_dist[dali]" in caplog.text
    with pytest.raises(ValueError, match=r"data\.pipeline is 'dali'.*pip install cacl_dist\[dali\]"):
        factory.resolve_pipeline("dali")
    with pytest.raises(ValueError, match=r"data\.eval_pipeline is 'dali'"):
        factory.resolve_pipeline("dali", "data.eval_pipeline")
    assert factory.resolve_pipeline("torchvision") == "torchvision"


def test_config_accepts_the_pipelines():
    cfg = load_config(None, ["data.pipeline=dali", "data.eval_pipeline=auto"])
    assert cfg.data.pipeline == "dali" and cfg.data.eval_pipeline == "auto"
    with pytest.raises(ConfigError, match="data.pipeline"):
        load_config(None, ["data.pipeline=opencv"])
