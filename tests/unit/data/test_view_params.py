"""Batch-drawn augmentation choices (the DALI pipeline's randomness) and the pipeline choice."""


import numpy as np
import pytest
import torch

from cacl_dist.config import ConfigError, load_config
from cacl_dist.data import pipelines, view_params
from cacl_dist.data.pipelines import dali as dali_pipeline
from cacl_dist.data.transforms import AugmentParams
from cacl_dist.data.view_params import draw_view_batch, sample_uniforms

N = 20000  # a rate p is estimated with std <= 0.5 / sqrt(N) = 0.0035


def test_choices_follow_the_configured_rates():
    params = AugmentParams(height=64, width=32, flip_p=0.3, pad=4, erase_p=0.7)
    choice = draw_view_batch(params, np.arange(N), 0)
    assert abs(choice.flip.mean() - 0.3) < 0.02  # > 5 sigma
    erased = choice.erase[:, 2] > 0
    assert abs(erased.mean() - 0.7) < 0.02
    for offsets in (choice.top, choice.left):  # uniform on 0 .. 2 * pad
        counts = np.bincount(offsets, minlength=9)
        assert counts.size == 9 and np.all(np.abs(counts / N - 1 / 9) < 0.012)  # std 0.0022


def test_erasing_boxes_lie_inside_and_follow_area_and_aspect_bounds():
    params = AugmentParams(height=64, width=32, erase_p=1.0)
    choice = draw_view_batch(params, np.arange(4000) * 7919, 1)
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
    choice = draw_view_batch(params, np.arange(500), 0)
    assert not choice.flip.any() and not choice.top.any() and not choice.left.any() and not choice.erase.any()


def test_choices_depend_only_on_the_sample_seed_and_view():
    seeds = np.arange(10, 26) * 1_000_003
    params = AugmentParams()
    a = draw_view_batch(params, seeds, 0)
    shuffled = np.random.default_rng(0).permutation(16)
    b = draw_view_batch(params, seeds[shuffled], 0)  # other batch order / composition: same per sample
    assert np.array_equal(a.erase[shuffled], b.erase) and np.array_equal(a.top[shuffled], b.top)
    halves = [draw_view_batch(params, part, 0) for part in (seeds[:8], seeds[8:])]  # as two ranks load it
    assert np.array_equal(np.concatenate([h.left for h in halves]), a.left)
    other_view = draw_view_batch(params, seeds, 1)
    assert not np.array_equal(a.top, other_view.top)
    with pytest.raises(ValueError, match="non-negative"):
        draw_view_batch(params, np.array([-1]), 0)


def test_uniforms_are_uniform_and_uncorrelated():
    u = sample_uniforms(np.arange(5000), 0, np.arange(8))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(np.abs(u.mean(axis=0) - 0.5) < 0.025)  # std 0.004
    corr = np.corrcoef(u.T)[np.triu_indices(8, 1)]
    assert np.all(np.abs(corr) < 0.08)  # std 0.014
    views = np.corrcoef(u[:, 0], sample_uniforms(np.arange(5000), 1, np.arange(1))[:, 0])[0, 1]
    assert abs(views) < 0.08
    neighbours = np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]  # consecutive seeds
    assert abs(neighbours) < 0.08


def test_late_erasing_tries_equal_computing_all_tries(monkeypatch):
    # Large and wide rectangles rarely fit a 64 x 32 image: the first tries fail often.
    params = AugmentParams(height=64, width=32, erase_p=0.9, erase_scale=(0.3, 0.4), erase_ratio=(0.1, 0.8))
    u = sample_uniforms(np.arange(3000), 1, np.array([view_params._ERASE]))[:, 0]
    _, _, fits = view_params._erase_tries(params, np.arange(3000), 1, np.arange(view_params.FIRST_TRIES))
    assert (~fits.any(axis=1) & (u < 0.9)).sum() > 10  # the late path matters here
    lazy = draw_view_batch(params, np.arange(3000), 1)
    monkeypatch.setattr(view_params, "FIRST_TRIES", view_params.ERASE_TRIES)
    full = draw_view_batch(params, np.arange(3000), 1)
    assert np.array_equal(lazy.erase, full.erase) and np.array_equal(lazy.flip, full.flip)
    assert 0 < ((full.erase[:, 2] > 0) != (u < 0.9)).sum() < 100  # a few wanted erasings found no fit


def test_view_converts_one_sample_to_view_params():
    choice = draw_view_batch(AugmentParams(erase_p=1.0), np.arange(4), 0)
    view = choice.view(2)
    assert view.erase == tuple(int(v) for v in choice.erase[2]) and view.flip == bool(choice.flip[2])


@pytest.fixture
def no_dali(monkeypatch):
    monkeypatch.setattr(dali_pipeline, "dali_available", lambda: False)
    pipelines.resolve_pipeline.cache_clear()
    yield
    pipelines.resolve_pipeline.cache_clear()


def test_auto_falls_back_to_torchvision_and_explicit_dali_names_the_extra(no_dali, monkeypatch):
    lines = []
    monkeypatch.setattr(pipelines.log, "info", lambda msg, *args: lines.append(msg % args))
    assert pipelines.resolve_pipeline("auto") == "torchvision"
    assert pipelines.resolve_pipeline("auto") == "torchvision"
    assert len(lines) == 1 and "using torchvision" in lines[0] and "pip install cacl_dist[dali]" in lines[0]
    with pytest.raises(ValueError, match=r"data\.pipeline is 'dali'.*pip install cacl_dist\[dali\]"):
        pipelines.resolve_pipeline("dali")
    with pytest.raises(ValueError, match=r"data\.eval_pipeline is 'dali'"):
        pipelines.resolve_pipeline("dali", "data.eval_pipeline")
    assert pipelines.resolve_pipeline("torchvision") == "torchvision"


def test_registry_returns_each_pipeline_module():
    assert pipelines.get_pipeline("dali") is dali_pipeline
    assert pipelines.get_pipeline("torchvision").NAME == "torchvision"
    assert pipelines.get_pipeline("torch-gpu").NAME == "torch-gpu"
    with pytest.raises(ValueError, match="'opencv' is not one of dali, torch-gpu, torchvision"):
        pipelines.get_pipeline("opencv")


def test_config_accepts_the_pipelines():
    cfg = load_config(None, ["data.pipeline=dali", "data.eval_pipeline=auto"])
    assert cfg.data.pipeline == "dali" and cfg.data.eval_pipeline == "auto"
    with pytest.raises(ConfigError, match="data.pipeline"):
        load_config(None, ["data.pipeline=opencv"])


@pytest.fixture
def dali_that_cannot_run_on_this_driver(monkeypatch):
    """DALI imports, but building a pipeline on the GPU fails (e.g. a CUDA 13 wheel on a CUDA 12 driver)."""
    import types

    probes = []

    def probe(device):
        probes.append(device)
        raise RuntimeError("CUDA error\ncudaErrorInsufficientDriver: CUDA driver version is insufficient")

    monkeypatch.setattr(dali_pipeline, "dali_available", lambda: True)
    monkeypatch.setattr(dali_pipeline, "require_dali", lambda key="data.pipeline": types.SimpleNamespace(
        __version__="2.4.0"))
    monkeypatch.setattr(dali_pipeline, "probe", probe)
    pipelines.resolve_pipeline.cache_clear()
    pipelines._dali_fails_on.cache_clear()
    yield probes
    pipelines.resolve_pipeline.cache_clear()
    pipelines._dali_fails_on.cache_clear()


def test_auto_falls_back_to_torchvision_when_dali_cannot_run_on_the_gpu(dali_that_cannot_run_on_this_driver,
                                                                          monkeypatch):
    from cacl_dist.data.pipelines import torch_gpu

    monkeypatch.setattr(torch_gpu, "device_problem", lambda device: "no nvJPEG here")  # torch-gpu cannot run either
    lines = []
    monkeypatch.setattr(pipelines.log, "warning", lambda msg, *args: lines.append(msg % args))
    cuda = torch.device("cuda", 0)
    assert pipelines.resolve_pipeline("auto", device=cuda) == "torchvision"
    assert pipelines.resolve_pipeline("auto", "data.eval_pipeline", device=cuda) == "torchvision"
    assert dali_that_cannot_run_on_this_driver == [cuda]  # probed once per device
    assert len(lines) == 2 and "\n" not in lines[0]
    assert "cannot run on cuda:0" in lines[0] and "CUDA driver version is insufficient" in lines[0]
    assert "pip install cacl_dist[dali-cu12]" in lines[0] and "using torchvision" in lines[0]
    # The CPU pipeline needs no probe; an explicit 'dali' is taken as asked.
    assert pipelines.resolve_pipeline("auto", device=torch.device("cpu")) == "dali"
    assert pipelines.resolve_pipeline("dali", device=cuda) == "dali"
    assert dali_that_cannot_run_on_this_driver == [cuda]
