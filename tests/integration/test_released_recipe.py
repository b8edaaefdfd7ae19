"""A tiny run with every released-code choice of the real recipes switched on (docs/method.md section 8)."""

from cacl_dist.runs.metrics import read_metrics
from cacl_dist.training.run_log import eval_summary

from tests.helpers.runs import fit

RELEASED = {
    "data.resize_interpolation": "bicubic", "augment.erase_ratio_max": 1 / 0.3,
    "augment.erase_ratio_sampling": "uniform", "augment.erase_fill": "imagenet_mean",
    "model.predictor_init": "kaiming", "memory.init_gray_from": "rgb", "clustering.refine_score": "official",
    "loss.focal_gamma": 4.0, "train.sampler": "released", "train.precision": "fp32",
    "data.synthetic.height": 80, "data.synthetic.width": 40,  # the images are resized to 64 x 32
}


def test_released_settings_train_cluster_and_report_last_and_best(tmp_path):
    trainer = fit(tmp_path / "run", tmp_path / "data", **RELEASED)
    assert [h["epoch"] for h in trainer.progress.eval_history] == [0, 1, 2]
    clusters = read_metrics(tmp_path / "run", "cluster")
    assert len(clusters) == 2 and all(c["num_clusters"] > 0 for c in clusters)
    [summary] = read_metrics(tmp_path / "run", "summary")
    expected = eval_summary(trainer.progress.eval_history)
    assert {k: summary[k] for k in expected} == expected
