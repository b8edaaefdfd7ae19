"""From the command line to the list of runs to submit: config checks, sweeps, run folders.

Every run is validated with the same `load_config` the training entry uses, before anything is
submitted, and gets an absolute run folder so that a requeued job (and the user) finds it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from cacl_dist.config import Config, ConfigError, load_config, parse_override, validate_for_world


@dataclass(frozen=True)
class Run:
    """One training run: its overrides, its run folder and a short name (for sweeps)."""

    name: str
    overrides: tuple[str, ...]
    run_dir: Path
    cfg: Config

    def train_argv(self, config: str | None) -> list[str]:
        """Arguments for `python -m cacl_dist.train` that reproduce this run."""
        argv = ["--config", config] if config else []
        for item in self.overrides:
            argv += ["--set", item]
        return argv


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """'optim.lr=1e-3,3e-4' -> ('optim.lr', ['1e-3', '3e-4'])."""
    if "=" not in text:
        raise ConfigError(f"--sweep '{text}' is not of the form key.path=value1,value2 (e.g. optim.lr=1e-3,3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not key or not values:
        raise ConfigError(f"--sweep '{text}' needs a key and at least one value (e.g. optim.lr=1e-3,3e-4)")
    parse_override(f"{key}={values[0]}")
    return key, values


def _folder_name(pairs: list[tuple[str, str]]) -> str:
    name = ",".join(f"{key}={value}" for key, value in pairs)
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def build_runs(config: str | None, overrides: list[str], sweeps: list[str], cwd: Path) -> list[Run]:
    """Validate the config (and every sweep point) and return the runs, each with an absolute folder.

    A sweep over k1 x k2 values gives k1 * k2 runs in `<run.output_dir>/<key>=<value>,...`.
    Relative paths (run.output_dir, data.root) are made absolute against `cwd`, where the job
    starts too.
    """
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"config file '{config}' does not exist; pass a YAML file such as configs/quickstart.yaml")
    try:
        base = load_config(config, overrides)
    except OSError as exc:  # unreadable (permissions, a folder): name the file like the other config errors
        raise ConfigError(f"config file '{config}' cannot be read ({exc.strerror or exc})") from None
    base_dir = Path(base.run.output_dir)
    base_dir = base_dir if base_dir.is_absolute() else (cwd / base_dir)
    data_root = Path(base.data.root)
    fixed = list(overrides)
    if not data_root.is_absolute():
        fixed.append(f"data.root={cwd / data_root}")
    axes = [parse_sweep(text) for text in sweeps]
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep names a key twice ({', '.join(keys)}); give each key once with all its values")
    runs = []
    for point in itertools.product(*[values for _, values in axes]):
        pairs = list(zip(keys, point))
        run_dir = base_dir / _folder_name(pairs) if pairs else base_dir
        items = fixed + [f"{key}={value}" for key, value in pairs] + [f"run.output_dir={run_dir}"]
        try:
            cfg = load_config(config, items)
        except ConfigError as exc:
            where = f" (sweep point {', '.join(f'{k}={v}' for k, v in pairs)})" if pairs else ""
            raise ConfigError(f"{exc}{where}") from None
        runs.append(Run(name=_folder_name(pairs) or base_dir.name, overrides=tuple(items), run_dir=run_dir, cfg=cfg))
    dirs = [run.run_dir for run in runs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("two sweep points map to the same run folder; make the swept values distinct")
    return runs


def check_world_size(runs: list[Run], world_size: int) -> None:
    """Every run must fit the job's processes (else the job fails after queueing): the training entry's own check."""
    for run in runs:
        where = f"; run {run.name}" if len(runs) > 1 else ""
        validate_for_world(run.cfg, world_size, processes=f"nodes x tasks per node{where}")
