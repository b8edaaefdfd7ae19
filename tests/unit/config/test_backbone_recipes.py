"""The person-pretrained ViT-S and ResNet-50-IBN-a recipes: the published settings, any GPU count, a cited reference."""

from pathlib import Path

import pytest

from cacl_dist.config import load_config, validate_for_world

PUBLISHED = {  # from the public scripts each recipe names in its header
    "configs/market1501_vit_s.yaml": {"model.backbone": "vit_small_convstem", "model.drop_path": 0.3,
                                      "optim.name": "sgd", "optim.lr": 3.5e-4, "optim.momentum": 0.9,
                                      "optim.weight_decay": 5e-4, "optim.step_size": 20, "train.epochs": 50,
                                      "train.iters_per_epoch": 200, "train.batch_size": 256, "train.num_instances": 8,
                                      "clustering.eps": 0.6, "memory.momentum": 0.2},
    "configs/msmt17_vit_s.yaml": {"model.backbone": "vit_small_convstem", "optim.name": "sgd", "clustering.eps": 0.7,
                                  "train.iters_per_epoch": 200, "train.num_instances": 8},
    "configs/market1501_ibn.yaml": {"model.backbone": "resnet50_ibn_a", "model.pool": "gem", "optim.name": "adam",
                                    "optim.lr": 3.5e-4, "train.epochs": 50, "train.iters_per_epoch": 400,
                                    "train.batch_size": 256, "train.num_instances": 16, "clustering.eps": 0.4,
                                    "memory.momentum": 0.1},
    "configs/msmt17_ibn.yaml": {"model.backbone": "resnet50_ibn_a", "clustering.eps": 0.7,
                                "train.iters_per_epoch": 400, "train.num_instances": 16},
}


def value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("path", sorted(PUBLISHED))
def test_recipe_takes_the_published_settings_on_any_gpu_count(path):
    cfg = load_config(path)
    assert {key: value(cfg, key) for key in PUBLISHED[path]} == PUBLISHED[path]
    for world in (1, 2, 4, 8):
        validate_for_world(cfg, world)


@pytest.mark.parametrize("path", sorted(PUBLISHED))
def test_recipe_names_where_its_reference_number_comes_from(path):
    header = Path(path).read_text().split("\nrun:")[0]
    assert "# Published reference:" in header and ("arXiv" in header or "issue #" in header)
    assert f"--config {path}" in header


@pytest.mark.parametrize("dataset", ["market1501", "msmt17"])
def test_camera_proxy_recipes_are_their_base_with_the_proxy_loss(dataset):
    """`<dataset>_vit_s_cap.yaml` names the ViT-S recipe as its base and changes only the run folder and the
    camera-proxy weight; it cites CAP and where a reference number for orientation comes from."""
    path = f"configs/{dataset}_vit_s_cap.yaml"
    cap, base = load_config(path), load_config(f"configs/{dataset}_vit_s.yaml")
    assert cap.loss.camera_proxy_weight == 1.0 and base.loss.camera_proxy_weight == 0.0
    cap.loss.camera_proxy_weight, cap.run.output_dir = base.loss.camera_proxy_weight, base.run.output_dir
    assert cap == base
    header = Path(path).read_text().split("\nbase:")[0]
    assert "# Published reference:" in header and "CAP" in header and "AAAI 2021" in header
    assert f"--config {path}" in header
    for world in (1, 2, 4, 8):
        validate_for_world(load_config(path), world)
