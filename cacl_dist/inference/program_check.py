"""Read a ``torch.export`` program (.pt2) without running anything it could smuggle in.

``torch.export.load`` is not a weights-only reader: it unpickles tensors and constants with
``weights_only=False``, hands symbolic-shape strings to ``sympy.sympify`` (an ``eval``), resolves
node targets by walking attributes from ``torch`` (``torch.serialization.os.system`` is reachable)
and compiles ``guards_code`` into Python. :func:`check_program_archive` reads the archive itself
first and refuses anything an export of a cacl_dist branch never holds: a pickle that needs more
than tensors and plain values, a node target other than an ATen operator or ``_operator.getitem``,
a symbol expression beyond ``Symbol('s0', positive=True, integer=True)``-like ones, or a guard.
"""

from __future__ import annotations

from cacl_dist.errors import UserError

import io
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem")
_EXPR_TOKENS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|'[su]\d+'|[\s()+\-*/,=]")
_EXPR_NAMES = {"Symbol", "positive", "integer", "True", "False", "Max", "Min", "FloorDiv", "CeilDiv", "Mod"}
_SYMBOL = re.compile(r"[su]\d+")


def is_program_archive(names: list[str]) -> bool:
    """Whether the members of a zip file are those of ``torch.export.save``."""
    return any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names)


def _strings_under(value: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from _strings_under(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from _strings_under(v, key)


def _safe_expression(text: str) -> bool:
    pos = 0
    for token in _EXPR_TOKENS.finditer(text):
        if token.start() != pos:
            return False
        word = token.group()
        if word[0].isalpha() or word[0] == "_":
            if word not in _EXPR_NAMES and not _SYMBOL.fullmatch(word):
                return False
        pos = token.end()
    return pos == len(text)


def _is_pickle(data: bytes) -> bool:
    """A complete pickle stream (protocol 2+), as opposed to raw tensor bytes."""
    if not data.startswith(b"\x80"):
        return False
    import pickletools

    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception:
        return False
    return True


def _refuse(path: Path, what: str) -> UserError:
    return UserError(f"'{path}' is a torch.export program that holds {what}, and loading it could run code; "
                     "refusing it. Pass an export written by python -m cacl_dist.export from a source you trust")


def check_program_archive(path: Path) -> None:
    """Raise a one-line ValueError when the .pt2 at ``path`` holds anything beyond an exported branch."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            if name.endswith(".json") and "/models/" in name:
                _check_model_json(path, name, data)
            elif data.startswith(b"PK\x03\x04"):  # a nested torch.save file
                try:
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                except (pickle.UnpicklingError, RuntimeError) as exc:
                    raise _refuse(path, f"a member '{name}' that is more than tensors ({type(exc).__name__})") \
                        from None
            elif _is_pickle(data):
                raise _refuse(path, f"a pickled object '{name}'")


def _check_model_json(path: Path, name: str, data: bytes) -> None:
    try:
        program = json.loads(data)
    except ValueError:
        raise UserError(f"'{path}' is a torch.export archive whose program '{name}' is not readable JSON; "
                        "export the checkpoint again") from None
    for target in _strings_under(program, "target"):
        if not isinstance(target, str) or not _TARGET.fullmatch(target):
            raise _refuse(path, f"a call of '{str(target)[:80]}' (only ATen operators are expected)")
    for expr in _strings_under(program, "expr_str"):
        if not isinstance(expr, str) or not _safe_expression(expr):
            raise _refuse(path, f"the shape expression '{str(expr)[:80]}'")
    for guards in _strings_under(program, "guards_code"):
        if guards:
            raise _refuse(path, "guard code")


__all__ = ["check_program_archive", "is_program_archive"]
