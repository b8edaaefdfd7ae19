"""run.output_dir must name a folder (never the current one by accident) outside data.root."""

import pytest

from cacl_dist.config import ConfigError, load_config


@pytest.mark.parametrize("value", ["", " ", '""'])
def test_an_empty_run_folder_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="'run.output_dir'.*empty"):
        load_config(None, [f"run.output_dir={value}"])


def test_an_empty_run_folder_in_a_recipe_file_is_refused(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  output_dir: ''\n")
    with pytest.raises(ConfigError, match="run.output_dir"):
        load_config(str(recipe), [])


@pytest.mark.parametrize("inside", ["", "runs/a", "bounding_box_train/../runs"])
def test_a_run_folder_inside_data_root_is_refused(tmp_path, inside):
    data = tmp_path / "Market-1501"
    with pytest.raises(ConfigError, match="'run.output_dir'.*inside data.root"):
        load_config(None, [f"data.root={data}", f"run.output_dir={data / inside}"])


def test_a_run_folder_inside_data_root_through_a_link_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(ConfigError, match="inside data.root"):
        load_config(None, [f"data.root={data}", f"run.output_dir={tmp_path / 'link' / 'run'}"])


def test_beside_data_root_is_fine(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", f"run.output_dir={tmp_path / 'data-runs'}"])
    assert cfg.run.output_dir == str(tmp_path / "data-runs")
