"""The real-dataset recipes reproduce the authors' released code; the paper's reading is three keys away
(docs/method.md section 8, README "Paper vs the released code")."""

import pytest

from cacl_dist.config import load_config

RECIPES = ("configs/market1501.yaml", "configs/dukemtmc.yaml", "configs/msmt17.yaml")
PAPER_READING = ("clustering.refine_score=paper", "loss.focal_gamma=2", "memory.init_gray_from=gray")

RELEASED = {
    "data.resize_interpolation": "bicubic",
    "augment.erase_p": 0.5, "augment.erase_area_min": 0.02, "augment.erase_area_max": 0.4,
    "augment.erase_ratio_min": 0.3, "augment.erase_ratio_max": 1 / 0.3, "augment.erase_ratio_sampling": "uniform",
    "augment.erase_fill": "imagenet_mean", "augment.gray_second_view": True,
    "model.predictor_init": "kaiming", "memory.init_gray_from": "rgb", "memory.momentum": 0.2,
    "clustering.refine_score": "official", "clustering.ratio_cluster": 1.0, "clustering.eps": 0.6,
    "clustering.eps_tight": 0.58, "clustering.k1": 30, "clustering.k2": 6, "clustering.outliers": "singleton",
    "loss.focal_gamma": 4.0, "loss.tau": 0.05, "train.sampler": "released", "train.precision": "fp32",
    "eval.precision": "train", "train.batch_size": 64, "train.num_instances": 4, "optim.lr": 3.5e-4,
}


def value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("path", RECIPES)
def test_recipes_take_the_released_code_values(path):
    cfg = load_config(path)
    assert {key: value(cfg, key) for key in RELEASED} == RELEASED


@pytest.mark.parametrize("path", RECIPES)
def test_paper_reading_changes_only_its_three_keys(path):
    cfg = load_config(path, PAPER_READING)
    expected = dict(RELEASED, **{"clustering.refine_score": "paper", "loss.focal_gamma": 2.0,
                                 "memory.init_gray_from": "gray"})
    assert {key: value(cfg, key) for key in RELEASED} == expected


QUICKSTART_RELEASED = ("data.resize_interpolation", "augment.erase_ratio_sampling", "augment.erase_ratio_max",
                       "augment.erase_fill", "model.predictor_init", "memory.init_gray_from",
                       "clustering.refine_score", "loss.focal_gamma", "train.sampler")


def test_quickstart_takes_the_released_code_choices():
    cfg = load_config("configs/quickstart.yaml")
    assert {key: value(cfg, key) for key in QUICKSTART_RELEASED} == {key: RELEASED[key] for key in QUICKSTART_RELEASED}


def test_schema_defaults_stay_the_paper_reading():
    """A config file that names none of these keys keeps the earlier defaults (paper refinement, exponent 2, ...)."""
    cfg = load_config(None)
    assert (cfg.data.resize_interpolation, cfg.augment.erase_fill, cfg.augment.erase_ratio_sampling,
            cfg.model.predictor_init, cfg.train.sampler, cfg.clustering.refine_score, cfg.loss.focal_gamma,
            cfg.memory.init_gray_from) == ("bilinear", "zero", "log_uniform", "default", "cacl", "paper", 2.0, "gray")
