"""The import graph flows one way: no module of ``harness/`` or ``analysis/`` imports, directly or
through others, a module that imports it back. Imports inside functions count (a lazy import is
still a dependency), and so do imports under ``if TYPE_CHECKING:``: they never run, but a type
that names the module above is the same circle on paper (the trial's parts see it through
``harness.trial.types.TrialView``). The top level of ``harness/`` stays a short list of packages."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "analysis")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: set[str], type_only: bool = True) -> set[str]:
    """The project modules ``name`` imports (``from pkg import submodule`` counts the submodule);
    ``type_only=False`` leaves out those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = set() if type_only else _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_in_harness_or_analysis():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    assert graph["harness.trial.loop"] >= {"harness.trial.noise", "harness.rules.scaling"}  # the walk sees imports at all
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n")
    known = {"a", "b", "c"}
    graph = {n: imports_of(n, tmp_path / f"{n}.py", known) for n in known}
    assert graph["c"] == {"a"}  # under TYPE_CHECKING: counted
    assert {n: imports_of(n, tmp_path / f"{n}.py", known, type_only=False) for n in known}["c"] == set()
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])


def test_a_type_only_import_closes_a_cycle(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import A\n")
    known = {"a", "b"}
    assert find_cycle({n: imports_of(n, tmp_path / f"{n}.py", known) for n in known}) is not None


def test_the_top_of_harness_is_a_few_packages_and_three_modules():
    """A newcomer reads the names at the top of ``harness/`` to find their room: packages named for
    what they hold (each ``__init__`` says what belongs there and what it may import), and the three
    modules every layer uses (the command line, the errors, the plugin registry)."""
    top = sorted(p.name for p in (REPO / "harness").iterdir() if not p.name.startswith(("_", ".")))
    assert top == ["cli.py", "commands", "data", "errors.py", "plugins.py", "results", "rules", "spec", "sweep",
                   "trial", "workloads"]
    for package in (p for p in (REPO / "harness").iterdir() if p.is_dir() and not p.name.startswith("_")):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"harness/{package.name}/__init__.py says what belongs there"


def test_no_module_grows_past_a_readable_size():
    """A module holds one concept; past ~350 lines it holds several (split it, as harness/sweep/,
    harness/spec/ and analysis/figure.py + curves.py + plots.py were)."""
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 360}
    assert not long, f"modules over 360 lines: {long}"
