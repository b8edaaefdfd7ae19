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
