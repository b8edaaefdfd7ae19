"""The import rules of docs/architecture.md, read from its table and checked on every module.

The table in section 2 ("Import rules") names each room, the module prefixes it holds and the rooms
it may import. This test parses that table, places every module of ``cacl_dist`` and ``launch`` in
its room (the longest prefix that names it), and fails on any import of the package the table does
not allow, on a cycle between modules or between rooms, and on a file over 400 lines. So the
document cannot drift from the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
MAX_LINES = 400
SOURCES = sorted([*REPO.joinpath("cacl_dist").rglob("*.py"), *REPO.joinpath("launch").rglob("*.py")])


def rooms_from_doc(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """({module prefix: room}, {room: rooms it may import}) from the table under '## 2. Import rules'."""
    section = text.split("## 2. Import rules", 1)[1].split("\n## ", 1)[0]
    prefixes, allowed = {}, {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("room", "") or set(cells[0]) <= {"-"}:
            continue
        for module in re.findall(r"`([\w.]+)`", cells[1]):
            prefixes[module] = cells[0]
        allowed[cells[0]] = {r.strip() for r in cells[2].split(",") if r.strip() not in ("", "-")}
    return prefixes, allowed


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path, modules: set[str], root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) for every import in `path` of a module in `modules` (relative ones resolved).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        while targets:
            target = targets.pop()
            if target in modules:
                found.append((node.lineno, target))
            elif "." in target:  # `import a.b.c` of a name inside a module: the module
                targets.append(target.rpartition(".")[0])
    return found


def room_of(module: str, prefixes: dict[str, str]) -> str | None:
    best = max((p for p in prefixes if module == p or module.startswith(p + ".")), key=len, default=None)
    return prefixes.get(best)


def broken_imports(sources: list[Path], prefixes: dict[str, str], allowed: dict[str, set[str]],
                   root: Path = REPO) -> list[str]:
    """Each import that leaves its room for a room the table does not allow, one line each."""
    modules = {module_name(p, root) for p in sources}
    broken = []
    for path in sources:
        own = room_of(module_name(path, root), prefixes)
        for line, module in package_imports(path, modules, root):
            other = room_of(module, prefixes)
            if other != own and other not in allowed.get(own, set()):
                broken.append(f"{path.relative_to(root)}:{line}: {own} imports {module} ({other})")
    return broken


def module_cycle(sources: list[Path], root: Path = REPO) -> list[str] | None:
    """A cycle of imports between modules, or None (a package importing its own submodules is no cycle)."""
    modules = {module_name(p, root) for p in sources}
    graph = {module_name(p, root): {m for _, m in package_imports(p, modules, root)} for p in sources}
    for name, targets in graph.items():
        graph[name] = {t for t in targets if t != name and not t.startswith(name + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, nxt])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


# ------------------------------------------------------------------------------------------ the rules
def test_every_room_of_the_table_has_modules_and_allows_only_known_rooms():
    prefixes, allowed = rooms_from_doc(DOC.read_text())
    assert len(allowed) >= 10 and set(prefixes.values()) == set(allowed)
    for room, rooms in allowed.items():
        assert rooms <= set(allowed), f"room {room} may import unknown rooms {rooms - set(allowed)}"
    modules = {module_name(p) for p in SOURCES}
    for prefix in prefixes:
        assert any(m == prefix or m.startswith(prefix + ".") for m in modules), f"{prefix} names no module"


def test_no_import_breaks_the_rules_of_the_document():
    prefixes, allowed = rooms_from_doc(DOC.read_text())
    broken = broken_imports(SOURCES, prefixes, allowed)
    assert not broken, "\n".join(broken)


def test_the_rooms_form_no_cycle():
    _, allowed = rooms_from_doc(DOC.read_text())
    done: set[str] = set()

    def visit(room: str, trail: list[str]) -> None:
        assert room not in trail, f"rooms may import each other: {' -> '.join([*trail, room])}"
        if room not in done:
            for other in allowed.get(room, ()):
                visit(other, [*trail, room])
            done.add(room)

    for room in allowed:
        visit(room, [])


def test_no_modules_import_each_other():
    cycle = module_cycle(SOURCES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_file_is_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long


# --------------------------------------------------------------------- the checker itself can fail
DOC_EXAMPLE = """## 2. Import rules

| room | modules | may import |
|---|---|---|
| base | `pkg.errors` | - |
| math | `pkg.losses` | base |
| training | `pkg.training` | base, math |

## 3. next
"""


@pytest.fixture
def tiny_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "training").mkdir(parents=True)
    for path, text in {"__init__.py": "", "errors.py": "", "losses.py": "from pkg.errors import X\n",
                       "training/__init__.py": "", "training/trainer.py": "from pkg import losses\n"}.items():
        (pkg / path).write_text(text)
    return tmp_path, pkg


def test_the_checker_finds_an_upward_import_and_a_cycle(tiny_package):
    root, pkg = tiny_package
    prefixes, allowed = rooms_from_doc(DOC_EXAMPLE)
    prefixes["pkg"] = "base"
    sources = sorted(pkg.rglob("*.py"))
    assert broken_imports(sources, prefixes, allowed, root) == [] and module_cycle(sources, root) is None
    (pkg / "losses.py").write_text("from pkg.errors import X\n\ndef f():\n    from .training.trainer import T\n")
    broken = broken_imports(sources, prefixes, allowed, root)
    assert broken == ["pkg/losses.py:4: math imports pkg.training.trainer (training)"]
    assert module_cycle(sources, root) == ["pkg.losses", "pkg.training.trainer", "pkg.losses"]
