import dataclasses
from pathlib import Path

import pytest

from cacl_dist.config import Config, ConfigError, config_from_dict, describe, dump_yaml, load_config, to_dict
from cacl_dist.config.loading import load_yaml

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_follow_the_method():
    cfg = Config()
    assert (cfg.clustering.k1, cfg.clustering.k2, cfg.clustering.eps, cfg.clustering.eps_tight,
            cfg.clustering.min_samples) == (30, 6, 0.6, 0.58, 4)
    assert (cfg.memory.momentum, cfg.loss.tau, cfg.loss.focal_gamma) == (0.2, 0.05, 2.0)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.step_size) == (3.5e-4, 5e-4, 20)
    assert (cfg.train.batch_size, cfg.train.num_instances, cfg.train.iters_per_epoch) == (64, 4, 400)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(str(recipe))
    assert isinstance(cfg, Config)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\noptim:\n  lr: 1\n")
    cfg = load_config(str(path), ["train.epochs=7", "data.synthetic.num_cameras=2", "model.pool=gem",
                                  "loss.tau=1e-2"])
    assert cfg.loss.tau == 0.01
    assert cfg.train.epochs == 7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.synthetic.num_cameras == 2
    assert cfg.model.pool == "gem"


@pytest.mark.parametrize("override, needle", [
    ("train.epoch=3", "train.epoch"),
    ("nope.x=1", "nope"),
    ("train.epochs=three", "train.epochs"),
    ("model.pool=max", "model.pool"),
    ("run.progress=1", "run.progress"),
    ("train.batch_size=10", "train.batch_size"),
    ("clustering.eps_tight=0.7", "clustering.eps_tight"),
    ("augment.flip_p=1.5", "augment.flip_p"),
    ("train.epochs", "key.path=value"),
])
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbon: resnet18\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "bad.yaml" in str(info.value) and "model.backbon" in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config(str(tmp_path / "does-not-exist.yaml"))


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["train.epochs=11", "data.root=/x"])
    again = config_from_dict(to_dict(cfg))
    assert again == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(str(path)) == cfg


def test_every_field_is_documented():
    text = describe()
    for section in dataclasses.fields(Config):
        assert f"{section.name}:  # " in text
    # every leaf line carries a non-empty description
    leaves = [line for line in text.splitlines() if " = " in line]
    assert leaves and all(line.split("  # ", 1)[1].strip() for line in leaves)


@pytest.mark.parametrize("overrides, needle", [
    (["model.bn_group_size=-16"], "must not be negative"),
    (["model.bn_group_size=18", "train.batch_size=36", "train.num_instances=4"],
     "not a multiple of train.num_instances"),
    (["model.bn_group_size=24", "train.batch_size=64"], "does not divide train.batch_size"),
    (["model.bn_group_size=16", "model.sync_bn=true"], "set one of them"),
])
def test_bn_group_size_is_checked_when_the_config_is_read(overrides, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(None, overrides)
    assert "model.bn_group_size" in str(info.value) and "\n" not in str(info.value)


def test_recipes_set_the_published_batchnorm_group():
    for name in ("market1501", "dukemtmc", "msmt17"):
        assert load_config(str(ROOT / "configs" / f"{name}.yaml")).model.bn_group_size == 16
    assert Config().model.bn_group_size == 0  # built-in default: each process's batch, as before




@pytest.mark.parametrize("override", ["optim.gamma=-0.1", "optim.gamma=0", "optim.gamma=5"])
def test_lr_step_factor_must_lie_in_zero_one(override):
    with pytest.raises(ConfigError, match="optim.gamma"):
        load_config(None, [override])
    assert load_config(None, ["optim.gamma=1"]).optim.gamma == 1.0


@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=nan", "loss.tau=.inf", "loss.focal_gamma=-.inf",
                                      "dist.timeout_min=inf", "clustering.eps=.NaN"])
def test_non_finite_floats_are_rejected_naming_the_key(override):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert override.split("=")[0] in str(info.value) and "finite" in str(info.value)


def test_non_finite_float_in_a_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: .nan\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "bad.yaml" in str(info.value) and "optim.lr" in str(info.value)


@pytest.mark.parametrize("batch, world, frozen_bn, needle", [
    (16, 3, False, "does not split over 3"),
    (8, 8, False, "leaves 1 image per rank"),
    (4, 4, False, "leaves 1 image per rank"),
])
def test_batch_must_suit_the_world_size(batch, world, frozen_bn, needle):
    from cacl_dist.config import validate_for_world

    cfg = load_config(None, [f"train.batch_size={batch}", "train.num_instances=1", f"model.frozen_bn={frozen_bn}"])
    with pytest.raises(ConfigError, match=needle) as info:
        validate_for_world(cfg, world)
    assert "train.batch_size" in str(info.value)
    validate_for_world(cfg, 1)  # one process: fine
    frozen = load_config(None, [f"train.batch_size={world}", "train.num_instances=1", "model.frozen_bn=true"])
    validate_for_world(frozen, world)  # frozen BatchNorm trains on 1 image per rank


def test_a_batch_that_does_not_fit_the_world_lists_every_rule_and_a_batch_that_keeps_them_all():
    from cacl_dist.config import validate_for_world
    from cacl_dist.config.world import world_problems

    cfg = load_config(None, ["train.batch_size=32", "train.num_instances=4", "model.bn_group_size=16"])
    with pytest.raises(ConfigError) as info:
        validate_for_world(cfg, 3)
    line = str(info.value)
    assert "\n" not in line and "32 does not split over 3 processes" in line
    suggested = int(line.split("train.batch_size=")[1].split(",")[0])
    assert suggested == 48 and world_problems(cfg, 3, suggested) == []  # not 30: no multiple of 4 or 16
    cfg = load_config(None, ["train.batch_size=48", "train.num_instances=4", "model.bn_group_size=16"])
    with pytest.raises(ConfigError) as info:  # splits over 2 (24 each), but a group of 16 fits neither way
        validate_for_world(cfg, 2)
    assert "model.bn_group_size 16 does not fit 24 images per process" in str(info.value)
    assert "train.batch_size=64" in str(info.value)  # 32 and 64 are as near; the larger keeps more images
    tiny = load_config(None, ["train.batch_size=6", "train.num_instances=2"])
    with pytest.raises(ConfigError) as info:  # two rules at once: the split and one image per rank
        validate_for_world(tiny, 4)
    assert "6 does not split over 4 processes" in str(info.value)
    problems = world_problems(tiny, 4, 4)
    assert len(problems) == 1 and "leaves 1 image per rank" in problems[0]
    assert world_problems(tiny, 4, 8) == [] and "train.batch_size=8" in str(info.value)
    layout = validate_for_world(load_config(None, ["train.batch_size=64", "model.bn_group_size=16"]), 8)
    assert (layout.mode, layout.ranks_per_group) == ("synced", 2)  # the layout the trainer realises


@pytest.mark.parametrize("override, needle", [
    ("run.seed=-1", "run.seed"),
    (f"run.seed={2**64 + 5}", "run.seed"),
    ("data.synthetic.seed=-3", "data.synthetic.seed"),
    ("clustering.k2=31", "clustering.k2"),
    ("data.synthetic.num_cameras=1", "data.synthetic.num_cameras"),
    ("data.height=100000000", "data.height"),
    ("data.height=1", "data.height"),
    ("data.width=1", "data.width"),
])
def test_values_that_failed_late_are_refused_when_the_config_is_read(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_one_camera_is_fine_for_a_dataset_that_is_not_synthetic():
    cfg = load_config(None, ["data.dataset=market1501", "data.synthetic.num_cameras=1", "run.seed=12345678901"])
    assert cfg.run.seed == 12345678901


def test_a_key_written_twice_in_a_file_is_refused_naming_key_file_and_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 16\n  epochs: 30\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "twice.yaml" in message and "'epochs'" in message and "lines 2 and 4" in message
    assert "\n" not in message


def test_the_same_key_in_two_sections_and_yaml_merges_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  batch_size: 16\neval:\n  batch_size: 32\n")
    cfg = load_config(str(path))
    assert (cfg.train.batch_size, cfg.eval.batch_size) == (16, 32)
    assert load_yaml("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n") == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


def test_a_latin1_config_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + "train:\n  epochs: 3  # r\u00e9glage\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "latin.yaml" in str(info.value) and "not UTF-8 text (byte 0xe9 on line 2)" in str(info.value)


def test_a_byte_order_mark_at_the_start_of_a_config_is_ignored(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbftrain:\n  epochs: 3\n")
    assert load_config(str(path)).train.epochs == 3
