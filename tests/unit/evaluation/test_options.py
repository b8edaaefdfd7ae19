"""Evaluation options from the config (eval.flip, eval.rerank*) and flip-averaged extraction."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cacl_dist.config import ConfigError, load_config
from cacl_dist.data.layouts import load_dataset
from cacl_dist.data.synthetic import generate_synthetic
from cacl_dist.evaluation.evaluator import EvalOptions, evaluate, evaluate_features
from cacl_dist.evaluation.extract import ExtractionSettings, extract_shard
from cacl_dist.evaluation.rerank_sparse import RerankParams
from cacl_dist.models.cacl import Branch


def test_options_from_the_config():
    assert EvalOptions.from_config(load_config(None).eval) == EvalOptions(flip=False, rerank=None)
    cfg = load_config(None, ["eval.rerank=true", "eval.rerank_k1=12", "eval.rerank_k2=3",
                             "eval.rerank_lambda=0.5", "eval.flip=true"])
    assert EvalOptions.from_config(cfg.eval) == EvalOptions(flip=True, rerank=RerankParams(12, 3, 0.5))
    assert EvalOptions.from_config(load_config(None, ["eval.rerank=true"]).eval).rerank == RerankParams(20, 6, 0.3)


@pytest.mark.parametrize("overrides, needle", [
    (["eval.rerank_k1=0"], "eval.rerank_k1"),
    (["eval.rerank_k2=-1"], "eval.rerank_k2"),
    (["eval.rerank_k1=5", "eval.rerank_k2=6"], "rerank_k2 <= rerank_k1"),
    (["eval.rerank_lambda=1.2"], "eval.rerank_lambda"),
    (["eval.flip=maybe"], "eval.flip"),
])
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


class Mirrored(torch.nn.Module):
    """``model`` applied to the mirror images."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images.flip(3))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny synthetic dataset with a query/gallery split."""
    root = generate_synthetic(str(tmp_path_factory.mktemp("data")), num_train_ids=3, num_test_ids=4,
                              images_per_id=6, num_cameras=2, height=64, width=32)
    return load_dataset("synthetic", root)


def test_flip_averages_the_image_and_its_mirror_before_normalising(dataset):
    records = dataset.train
    torch.manual_seed(0)
    model = Branch("resnet_tiny").eval()
    settings = ExtractionSettings(height=64, width=32, batch_size=5)
    plain = extract_shard(model, records, 0, len(records), settings)
    mirror = extract_shard(Mirrored(model), records, 0, len(records), settings)
    flipped = extract_shard(model, records, 0, len(records), ExtractionSettings(height=64, width=32, batch_size=5,
                                                                                  flip=True))
    torch.testing.assert_close(flipped, F.normalize((plain + mirror) / 2, dim=1), atol=1e-6, rtol=0)
    assert not torch.allclose(flipped, plain, atol=1e-3)
    torch.testing.assert_close(flipped.norm(dim=1), torch.ones(len(records)))


def test_evaluate_applies_flip_and_rerank(dataset):
    torch.manual_seed(1)
    model = Branch("resnet_tiny").eval()
    settings = ExtractionSettings(height=64, width=32, batch_size=8)
    options = EvalOptions(flip=True, rerank=RerankParams(k1=5, k2=2, lambda_value=0.3))
    got = evaluate(model, dataset, settings, rank=0, world_size=1, options=options)
    records = list(dataset.query) + list(dataset.gallery)
    feats = extract_shard(model, records, 0, len(records), dataclasses.replace(settings, flip=True))
    num_query = len(dataset.query)
    ids = [np.array([getattr(r, key) for r in part]) for key, part in
           (("pid", dataset.query), ("pid", dataset.gallery), ("camid", dataset.query), ("camid", dataset.gallery))]
    expected = evaluate_features(feats[:num_query], feats[num_query:], *ids, rerank=options.rerank)
    plain = evaluate(model, dataset, settings, rank=0, world_size=1)
    for key in ("mAP", "rank1", "mINP", "num_valid_queries"):
        assert got[key] == expected[key], key
    assert plain["mAP"] != got["mAP"]
