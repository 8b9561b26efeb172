"""YAML -> a validated spec: 1.2-style floats, ``--set`` overrides, the file named in errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from harness.errors import BatchscaleError, SpecError
from harness.spec.common import _spec_error
from harness.spec.sweep import RecipeSpec, SweepSpec
from harness.spec.trial import TrialSpec


class _Loader(yaml.SafeLoader):
    """YAML with 1.2-style floats: ``1e-3`` is a number (PyYAML's 1.1 rules make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)|\.\d+(?:[eE][-+]?\d+)?|\d[\d_]*\.[\d_]*)$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", text, "allowed: KEY=VALUE with a dotted key, e.g. --set batch_size=4096")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(".".join(path[: i + 1]), child, f"allowed: a mapping (cannot set {'.'.join(path)})")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BatchscaleError(f"spec file not found: {path}")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError("(file)", str(path), f"not valid YAML{where}: {getattr(e, 'problem', e)}", str(path)) from None
    if not isinstance(data, dict):
        raise SpecError("(file)", type(data).__name__, "allowed: a YAML mapping at the top level", str(path))
    return data


def load_spec(path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None,
              kind: Literal["trial", "sweep", "any"] = "any") -> TrialSpec | SweepSpec | RecipeSpec:
    """Read, override, validate. ``kind`` refuses the other kind of spec with a clear message;
    ``any`` also accepts a workload-free recipe spec (``dataset_size`` + ``recipe``)."""
    source = str(path) if path else None
    raw = apply_overrides(read_yaml(path) if path else (data or {}), list(overrides))
    if kind == "any" and "workload" not in raw and "dataset_size" in raw:
        try:
            return RecipeSpec.model_validate(raw).check()
        except ValidationError as e:
            raise _spec_error(e, RecipeSpec, source=source) from None
    is_sweep = "axes" in raw
    if kind == "trial" and is_sweep:
        raise SpecError("axes", "...", "a trial spec has no 'axes'; run this sweep spec with 'batchscale sweep'", source)
    if kind == "sweep" and not is_sweep:
        raise SpecError("axes", None, "a sweep spec needs 'axes' (batch_sizes, methods, optimizers, seeds); "
                        "run a single trial with 'batchscale train'", source)
    cls = SweepSpec if is_sweep else TrialSpec
    if is_sweep and not raw.get("name") and path:
        raw["name"] = Path(path).stem
    try:
        spec = cls.model_validate(raw)
        return spec.check()
    except ValidationError as e:
        err = _spec_error(e, cls)
    except SpecError as e:
        if e.source:
            raise
        err = e
    raise err.with_source(_source_of(err.key, list(overrides), source)) from None


def _source_of(key: str, overrides: list[str], path: str | None) -> str | None:
    """Where a bad key came from: the ``--set`` that set it (or a key above or below it), else the file."""
    parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")
    for text in reversed(overrides):  # the last --set of a key wins
        over, _ = parse_override(text)
        n = min(len(over), len(parts))
        if over[:n] == parts[:n]:
            return f"--set {text}"
    return path
