"""Reading a config: strict YAML, `key=value` overrides, type checks, and writing it back out.

Unknown keys and values of the wrong type are errors that name the key. Runtime facts (world
size, number of clusters) are never written back into the config.
"""

from __future__ import annotations

import ast
import codecs
import dataclasses
import inspect
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from cacl_dist.config.schema import Config
from cacl_dist.errors import ConfigError
from cacl_dist.config.validation import validate


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation and return it (ints are accepted for floats)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping (plain YAML keeps the last)."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *anchor' merges may be overridden: that is their purpose
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise ConfigError(f"key '{key}' appears twice (lines {first_line[key]} and {line}; YAML would "
                              "silently keep the last); keep one")
        first_line[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str) -> Any:
    """Parse YAML text strictly (see :class:`_StrictLoader`); ConfigError for a duplicated key."""
    return yaml.load(text, Loader=_StrictLoader)


def _read_utf8(path: Path) -> str:
    """The text of the config file ``path`` (UTF-8, a leading byte-order mark dropped); ConfigError naming it."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                          "save it as UTF-8") from None


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge(obj: Any, values: dict, prefix: str) -> None:
    """Write a nested dict of values into dataclass `obj`, strictly."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {values!r}")
    types = _field_types(type(obj))
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in types:
            known = ", ".join(types)
            raise ConfigError(f"unknown config key '{full}' (known keys here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, types[key], full))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except ConfigError as exc:
        raise ConfigError(f"override '{text}': {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


BASE_KEY = "base"
"""Top-level key of a recipe file naming the recipe it builds on (a path relative to the file)."""


def _merge_dicts(base: dict, over: dict) -> dict:
    """`over` written onto `base`: mappings merge key by key (recursively), any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _read_recipe(path: str | Path, chain: tuple[Path, ...] = ()) -> dict:
    """The values of the recipe file `path` with its base recipes (``base: other.yaml``) merged under them.

    A base is resolved relative to the file that names it; bases may have bases. ConfigError (one line) for a
    missing or unreadable file, a cycle, or a base that is not a file name."""
    file = Path(path)
    shown = " -> ".join([*(str(p) for p in chain), str(file)])
    if not file.is_file():
        if chain:
            raise ConfigError(f"config file '{chain[-1]}': its base '{file}' does not exist (chain: {shown}); "
                              f"'{BASE_KEY}:' names a recipe relative to the file that names it")
        raise ConfigError(f"config file '{path}' does not exist; pass a YAML file such as configs/quickstart.yaml")
    if file.resolve() in {p.resolve() for p in chain}:
        raise ConfigError(f"config file '{chain[0]}': its '{BASE_KEY}:' recipes form a cycle ({shown}); "
                          "remove one of the base keys")
    try:
        values = load_yaml(_read_utf8(file)) or {}
    except ConfigError as exc:
        raise ConfigError(f"config file '{file}': {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{file}' is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{file}': expected a mapping of sections, got {values!r}")
    if BASE_KEY not in values:
        return values
    base = values.pop(BASE_KEY)
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file '{file}': '{BASE_KEY}' must name a recipe file (e.g. {BASE_KEY}: "
                          f"market1501.yaml), got {base!r}")
    base_file = Path(base).expanduser()
    if not base_file.is_absolute():
        base_file = file.parent / base_file
    return _merge_dicts(_read_recipe(base_file, (*chain, file)), values)


def read_recipe(path: str | Path) -> dict:
    """The values of a recipe file as nested dicts, its ``base:`` recipes merged under them (not validated)."""
    return _read_recipe(path)


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from defaults, then a YAML file (on top of its ``base:`` recipes, if it names one), then
    `key=value` overrides, and validate it."""
    cfg = Config()
    if path is not None:
        values = _read_recipe(path)
        try:
            _merge(cfg, values, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Apply `key.path=value` overrides to `cfg` in place, validate, and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        _merge(cfg, _nest(keys, value), "")
    validate(cfg)
    return cfg


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. the copy stored in a checkpoint)."""
    cfg = Config()
    _merge(cfg, values, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value
    return docs


def describe(cfg: Config | None = None) -> str:
    """A reference of every key with its current value and docstring."""
    cfg = cfg or Config()
    lines: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        docs = _field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{prefix}{f.name}:  # {docs.get(f.name, '')}")
                walk(value, prefix + f.name + ".")
            else:
                lines.append(f"  {prefix}{f.name} = {value!r}  # {docs.get(f.name, '')}")

    walk(cfg, "")
    return "\n".join(lines)
