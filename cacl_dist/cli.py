"""Shared command-line pieces of the entry points: config arguments and user-error reporting."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def add_config_args(parser: argparse.ArgumentParser, default_config: bool = True) -> None:
    """--config FILE and repeatable --set key=value."""
    help_default = f" (default: {DEFAULT_CONFIG.name})" if default_config else ""
    parser.add_argument("--config", default=None, help="YAML recipe, e.g. configs/market1501.yaml" + help_default)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=10 (repeatable)")


def default_config_path() -> str | None:
    """The quickstart recipe when it ships beside the package, else None (built-in defaults)."""
    return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None


def run_main(body: Callable[[], int | None]) -> int:
    """Run `body`; user errors (bad config, missing files) print one line and exit with status 2."""
    try:
        return int(body() or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; start the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


def load_trained_model(checkpoint: str, config: str | None, overrides: list[str]):
    """Read a cacl_dist checkpoint and rebuild its model: returns (state, cfg, model).

    The run's own config (stored in the checkpoint) is used unless `config` names a recipe;
    `overrides` adjust either. A checkpoint that does not fit the resulting model is a
    one-line ValueError naming the checkpoint.
    """
    from . import checkpoint as ckpt
    from .config import apply_overrides, config_from_dict, load_config
    from .models.cacl import build_model

    state = ckpt.load_checkpoint(checkpoint)
    if config:
        cfg = load_config(config, overrides)
    elif isinstance(state.get("config"), dict):
        cfg = apply_overrides(config_from_dict(state["config"]), overrides)
    else:
        raise ValueError(f"checkpoint '{checkpoint}' stores no config; pass the run's recipe with --config")
    if "model" not in state:
        raise ValueError(f"checkpoint '{checkpoint}' holds no model weights")
    model = build_model(cfg.model.backbone, "none", cfg.model.pool, cfg.model.last_stride)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:] or [str(exc)])
        first = detail if len(detail) <= 200 else detail[:200] + "..."
        raise ValueError(f"checkpoint '{checkpoint}' does not fit model.backbone={cfg.model.backbone} "
                         f"model.pool={cfg.model.pool} ({first}); drop the --set/--config that changed the "
                         "model") from None
    return state, cfg, model
