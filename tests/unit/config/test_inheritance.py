"""Recipes that build on a base recipe (`base: other.yaml`), and --print-config showing the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cacl_dist.config import ConfigError, load_config, to_dict
from cacl_dist.config.loading import read_recipe

ROOT = Path(__file__).resolve().parents[3]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_recipe_overrides_its_base_key_by_key_and_set_comes_last(tmp_path):
    write(tmp_path / "recipes" / "base.yaml", "train:\n  epochs: 50\n  batch_size: 32\noptim:\n  lr: 0.5\n")
    child = write(tmp_path / "recipes" / "child.yaml", "base: base.yaml\ntrain:\n  epochs: 5\n")
    cfg = load_config(str(child))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (5, 32, 0.5)  # merged, not replaced
    cfg = load_config(str(child), ["train.batch_size=16", "optim.lr=0.1"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == (5, 16, 0.1)


def test_bases_chain_and_resolve_relative_to_the_file_that_names_them(tmp_path):
    write(tmp_path / "a" / "root.yaml", "train:\n  epochs: 11\n  iters_per_epoch: 7\nclustering:\n  k1: 9\n  k2: 3\n")
    write(tmp_path / "b" / "middle.yaml", "base: ../a/root.yaml\ntrain:\n  iters_per_epoch: 8\n")
    leaf = write(tmp_path / "c" / "leaf.yaml", "base: ../b/middle.yaml\nclustering:\n  k1: 12\n")
    values = read_recipe(leaf)
    assert values == {"train": {"epochs": 11, "iters_per_epoch": 8}, "clustering": {"k1": 12, "k2": 3}}
    cfg = load_config(str(leaf))
    assert (cfg.train.epochs, cfg.train.iters_per_epoch, cfg.clustering.k1, cfg.clustering.k2) == (11, 8, 12, 3)


def test_a_cycle_of_bases_is_refused_in_one_line(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(str(tmp_path / "a.yaml"))
    assert "\n" not in str(err.value) and "a.yaml -> " in str(err.value) and "b.yaml" in str(err.value)
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "self.yaml"))


@pytest.mark.parametrize("text, needle", [("base: missing.yaml\n", "missing.yaml' does not exist"),
                                          ("base: 3\n", "must name a recipe file"),
                                          ("base: b.yaml\ntrain:\n  epochz: 1\n", "train.epochz")])
def test_a_bad_base_names_the_file(tmp_path, text, needle):
    write(tmp_path / "b.yaml", "train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=needle) as err:
        load_config(str(write(tmp_path / "a.yaml", text)))
    assert "\n" not in str(err.value)


def test_the_cpu_smoke_recipe_is_the_market_recipe_with_few_changes():
    market = to_dict(load_config(str(ROOT / "configs" / "market1501.yaml")))
    smoke = to_dict(load_config(str(ROOT / "configs" / "market1501_cpu.yaml")))
    own = yaml.safe_load((ROOT / "configs" / "market1501_cpu.yaml").read_text())
    assert own.pop("base") == "market1501.yaml"
    for section in market:
        for key, value in market[section].items():
            expected = own.get(section, {}).get(key, value)
            assert smoke[section][key] == expected, f"{section}.{key}"
    assert smoke["data"]["dataset"] == "market1501" and smoke["train"]["sampler"] == "released"
    assert smoke["model"]["pretrained"] == "none"  # runs without ImageNet weights


def test_print_config_prints_the_resolved_recipe_and_touches_nothing(tmp_path, capsys):
    from cacl_dist.cli import train

    run_dir = tmp_path / "run"
    write(tmp_path / "base.yaml", f"run:\n  output_dir: {run_dir}\ntrain:\n  epochs: 9\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain:\n  iters_per_epoch: 4\n")
    assert train.main(["--config", str(child), "--set", "optim.lr=0.25", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 9 and printed["train"]["iters_per_epoch"] == 4
    assert printed["optim"]["lr"] == 0.25 and "base" not in printed
    assert printed == to_dict(load_config(str(child), ["optim.lr=0.25"]))
    assert not run_dir.exists()


def test_print_config_of_the_other_entries(tmp_path, capsys):
    from cacl_dist.cli import evaluate, export
    from launch import slurm

    recipe = str(ROOT / "configs" / "market1501_cpu.yaml")
    expected = to_dict(load_config(recipe, ["data.root=/elsewhere"]))
    for main, argv in ((evaluate.main, ["--checkpoint", str(tmp_path / "none.pt")]),
                       (export.main, ["--checkpoint", str(tmp_path / "none.pt"), "--format", "export", "--output",
                                     str(tmp_path / "x")]),
                       (slurm.main, [])):
        assert main([*argv, "--config", recipe, "--set", "data.root=/elsewhere", "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == []
