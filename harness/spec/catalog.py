"""The specs that ship with batchscale, found from any folder: the example sweeps
(``experiments/*.yaml``) and the paper studies (``experiments/paper/*.yaml``).

A spec is looked up as the path given, then by name in ``./experiments`` (a project's own specs
win), then in the specs installed with batchscale: the checkout an editable install runs from, or
``<prefix>/share/batchscale/experiments`` for a wheel (``pyproject.toml``'s data files).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.errors import BatchscaleError, did_you_mean

#: the paper studies' recipe-only specs (``batchscale schedule``), not runnable studies
RECIPE_ONLY = "_recipe"


def roots() -> list[Path]:
    """Folders holding an ``experiments`` tree, in lookup order (those that exist)."""
    candidates = [Path.cwd() / "experiments", Path(__file__).resolve().parents[2] / "experiments",
                  Path(sys.prefix) / "share" / "batchscale" / "experiments"]
    out = []
    for c in candidates:
        if c.is_dir() and all(c.resolve() != o.resolve() for o in out):
            out.append(c)
    return out


def studies() -> dict[str, Path]:
    """Paper study name -> its spec (the first found in lookup order)."""
    return _named("paper/*.yaml", lambda p: RECIPE_ONLY not in p.stem)


def examples() -> dict[str, Path]:
    """Example sweep name -> its spec."""
    return _named("*.yaml", lambda p: True)


def _named(pattern: str, keep) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for root in roots():
        for path in sorted(root.glob(pattern)):
            if keep(path):
                out.setdefault(path.stem, path)
    return out


def find_study(name: str) -> Path:
    """A paper study by name (``mnist_lstm``) or a spec path."""
    path = Path(name)
    if path.suffix or path.is_file():
        if not path.is_file():
            raise BatchscaleError(f"reproduce: spec file not found: {path}")
        return path
    known = studies()
    if name not in known:
        raise BatchscaleError(f"reproduce: no study {name!r}{did_you_mean(name, known)}; allowed: "
                              f"{', '.join(sorted(known)) or '(none found)'} "
                              f"(looked in {', '.join(str(r / 'paper') for r in roots()) or 'no experiments folder'})")
    return known[name]


def find_spec(name: str) -> Path:
    """A spec path, or the name of an example sweep (``default``, ``fmnist_lstm``) or of a paper
    study (``batchscale plan legw_imagenet``)."""
    path = Path(name)
    if path.suffix or path.is_file():
        return path
    return examples().get(name) or studies().get(name) or path  # load_spec names a missing file
