"""What every spec model shares: strict models, one-line errors from pydantic's, recipe helpers."""

from __future__ import annotations

import copy
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import SpecError, did_you_mean
from harness.rules.scaling import BaseRecipe, merge_recipe


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _merge(base: dict, over: dict) -> dict:
    return merge_recipe(copy.deepcopy(base), copy.deepcopy(over))


def _check_batch_split(micro: int | None, batch: int, batch_key: str, workers: int = 1) -> None:
    if batch % workers:
        raise SpecError("data_parallel.workers", workers, f"allowed: a divisor of {batch_key} ({batch})")
    if micro is not None and (batch // workers) % micro:
        share = f"{batch_key} ({batch})" if workers == 1 else f"{batch_key} / data_parallel.workers ({batch // workers})"
        raise SpecError("micro_batch_size", micro, f"allowed: a divisor of {share}")


def _base_recipe(wl, optimizer: str | None, overrides: dict, key: str) -> BaseRecipe:
    try:
        return wl.base_recipe(optimizer, overrides)
    except ValidationError as e:
        raise _spec_error(e, BaseRecipe, prefix=key) from None


def _spec_error(e: ValidationError, model: type[BaseModel], prefix: str = "", source: str | None = None) -> SpecError:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or "(spec)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        guess = did_you_mean(str(err["loc"][-1]), allowed).strip(" ()") if allowed else ""
        hint = (f"unknown key{'; ' + guess if guess else ''}; allowed keys: {', '.join(allowed)}" if allowed
                else "unknown key")
        return SpecError(key, err.get("input"), hint, source)
    if err["type"] == "missing":
        return SpecError(key, None, "this key is required", source)
    msg = err["msg"].removeprefix("Value error, ")
    return SpecError(key, err.get("input"), f"allowed: {msg[0].lower()}{msg[1:]}" if msg else "invalid", source)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc``, following model-typed fields and the tags of
    discriminated unions (``decay.poly.<key>``)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        models = _models_in(current)
        if len(models) > 1:  # a discriminated union: this part is the tag
            current = next((m for m in models if "kind" in m.model_fields
                            and part in get_args(m.model_fields["kind"].annotation)), None)
            continue
        if not models or part not in models[0].model_fields:
            return []
        current = models[0].model_fields[part].annotation
    models = _models_in(current)
    return list(models[0].model_fields) if len(models) == 1 else []


def _models_in(annotation) -> list:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]
