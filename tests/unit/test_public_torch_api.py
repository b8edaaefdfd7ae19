"""The package uses public torch only: no ``torch.ops``, no ``torch._*``, no private names of other objects.

CPU tests cannot see a private kernel that behaves differently on CUDA (a private batch-norm backward
once did), so the rule is checked on the source: every module of ``cacl_dist`` and ``launch`` is
parsed, and the names that reach torch (``import torch.nn as nn``, ``from torch import nn`` ...) are
followed through every attribute chain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*REPO.joinpath("cacl_dist").rglob("*.py"), *REPO.joinpath("launch").rglob("*.py")])

#: Private names of other libraries that are the documented way to do something, with the reason.
ALLOWED = {
    ("os", "_exit"): "the documented way to end a process without cleanup",
    ("multiarray", "_reconstruct"): "NumPy's array rebuild, which torch documents for weights_only loading",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ['a', 'b', 'c'] (None when the chain does not start at a plain name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Each use of a private torch API (or a private attribute of another object) in `source`, one line each."""
    tree = ast.parse(source, filename)
    torch_names = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    torch_names.add(alias.asname or "torch")
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            for alias in node.names:
                torch_names.add(alias.asname or alias.name)
                if any(_private(p) for p in [*node.module.split("."), alias.name]):
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if chain and chain[0] in torch_names:
            if chain[1:2] == ["ops"] or any(_private(p) for p in chain[1:]):
                found.append(f"{filename}:{node.lineno}: {'.'.join(chain)}")
        elif _private(node.attr) and not (chain and chain[0] in ("self", "cls") and len(chain) == 2):
            owner = chain[-2] if chain and len(chain) >= 2 else "?"
            if (owner, node.attr) not in ALLOWED:
                found.append(f"{filename}:{node.lineno}: private attribute .{node.attr} of another object")
    return sorted(set(found))


def test_the_package_uses_only_public_torch():
    found = [line for path in SOURCES for line in violations(path.read_text(), str(path.relative_to(REPO)))]
    assert SOURCES and not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "import torch\ntorch.ops.aten.native_batch_norm_backward(1)",
    "import torch\ntorch._C._nn.foo()",
    "import torch as T\nT._foreach_add(x, y)",
    "from torch.nn.modules.batchnorm import _BatchNorm",
    "from torch import nn\nisinstance(m, nn.modules.batchnorm._BatchNorm)",
    "import torch.nn.functional as F\nF._canonical_mask(x)",
    "import torch._dynamo",
    "scheduler._last_lr = [0.1]",
])
def test_the_rule_sees_each_kind_of_private_use(source):
    assert violations(source)


@pytest.mark.parametrize("source", [
    "import torch\ntorch.var_mean(x, dim=(0, 2), correction=0)",
    "import torch.nn.functional as F\nF.batch_norm(x, None, None, training=True)",
    "class A:\n    def f(self):\n        return self._cache",
    "import os\nos._exit(3)",
    "x.__class__.__name__",
])
def test_the_rule_lets_public_use_pass(source):
    assert not violations(source)
