"""Request parsing for the retrieval endpoint: one place that turns a v1 body or a v2 request
into ``(queries, top_ks)`` or raises `kserve.errors.InvalidInput` (HTTP 400) naming the field.

Validation is hand-written rather than a pydantic model so that every message names the field
and the instance index in the protocol's own terms (``instances[3].top_k``, ``inputs[0]``), and
so that a ``bool`` is never accepted as an integer (JSON ``true`` is not a ``top_k``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crops.schema import MAX_QUERY_BYTES

#: top_k when a request gives none (the online simulation's retrieval depth).
DEFAULT_TOP_K = 100

V1_FIELDS = ("query", "top_k")
V2_INPUTS = ("query", "top_k")


class Limits(BaseModel):
    """What one request may ask for; the server refuses anything beyond with a 400."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_top_k: int = Field(1000, ge=1, le=100_000)
    max_batch: int = Field(64, ge=1, le=10_000)
    default_top_k: int = Field(DEFAULT_TOP_K, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _cap_default(cls, values: Any) -> Any:
        """A request without top_k gets the default, capped by max_top_k (never a 400)."""
        if isinstance(values, dict) and "max_top_k" in values:
            cap = values["max_top_k"]
            default = values.get("default_top_k", DEFAULT_TOP_K)
            if isinstance(cap, int) and isinstance(default, int) and cap >= 1:
                values = {**values, "default_top_k": min(default, cap)}
        return values


@dataclass(frozen=True)
class Parsed:
    """A validated request: one query and one top_k per instance."""

    queries: list[str]
    top_ks: list[int]


def _check_query(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: query must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{where}: query is empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_QUERY_BYTES:
        raise InvalidInput(f"{where}: query is {size} bytes, over the {MAX_QUERY_BYTES}-byte limit")
    return value


def _check_top_k(value: Any, where: str, limits: Limits) -> int:
    # bool is an int subclass in Python; np.integer arrives from v2 tensors
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{where}: top_k must be an integer, got {type(value).__name__}")
    k = int(value)
    if not 1 <= k <= limits.max_top_k:
        raise InvalidInput(f"{where}: top_k must be between 1 and {limits.max_top_k}, got {k}")
    return k


def _check_batch(n: int, what: str, limits: Limits) -> None:
    if n == 0:
        raise InvalidInput(f"{what} is empty: send at least one query")
    if n > limits.max_batch:
        raise InvalidInput(f"{what} holds {n} queries, over the batch limit of {limits.max_batch}")


def parse_v1(body: Any, limits: Limits) -> Parsed:
    """``{"instances": [{"query": str, "top_k": int}, ...]}``; an instance may be a bare string."""
    if isinstance(body, bytes):  # kserve passes non-JSON content types through undecoded
        raise InvalidInput(
            "the body must be a JSON object sent with Content-Type: application/json,"
            ' e.g. {"instances": [{"query": "cat videos", "top_k": 10}]}'
        )
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(body).__name__}")
    if "instances" not in body:
        raise InvalidInput('missing field "instances": a list of {"query": str, "top_k": int}')
    unknown = sorted(set(body) - {"instances"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} in the body (allowed: instances)")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"instances must be a list, got {type(instances).__name__}")
    _check_batch(len(instances), "instances", limits)
    queries, top_ks = [], []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(inst, str):
            queries.append(_check_query(inst, where))
            top_ks.append(limits.default_top_k)
            continue
        if not isinstance(inst, dict):
            raise InvalidInput(
                f'{where}: an instance must be an object {{"query": ..., "top_k": ...}} or a'
                f" string, got {type(inst).__name__}"
            )
        unknown = sorted(set(inst) - set(V1_FIELDS))
        if unknown:
            raise InvalidInput(
                f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(V1_FIELDS)})"
            )
        if "query" not in inst:
            raise InvalidInput(f'{where}: missing field "query"')
        queries.append(_check_query(inst["query"], where))
        top_ks.append(_check_top_k(inst.get("top_k", limits.default_top_k), where, limits))
    return Parsed(queries, top_ks)


def parse_v2(request: Any, limits: Limits) -> Parsed:
    """Open inference protocol: input ``query`` (BYTES, shape [n]) and an optional ``top_k``
    (INT32/INT64, shape [1]) as an input or a request parameter; one top_k for the batch."""
    inputs = {}
    for j, inp in enumerate(request.inputs):
        if inp.name not in V2_INPUTS:
            raise InvalidInput(
                f"inputs[{j}]: unknown input {inp.name!r} (allowed: {', '.join(V2_INPUTS)})"
            )
        if inp.name in inputs:
            raise InvalidInput(f"inputs[{j}]: input {inp.name!r} given twice")
        inputs[inp.name] = inp
    if "query" not in inputs:
        raise InvalidInput('missing input "query" (datatype BYTES, shape [n])')
    queries = _v2_queries(inputs["query"], limits)
    params = request.parameters or {}
    if "top_k" in inputs and "top_k" in params:
        raise InvalidInput("top_k given both as an input and as a parameter: give one")
    if "top_k" in inputs:
        k = _v2_top_k(inputs["top_k"], limits)
    elif "top_k" in params:
        k = _check_top_k(params["top_k"], "parameters", limits)
    else:
        k = limits.default_top_k
    return Parsed(queries, [k] * len(queries))


def _v2_values(inp: Any, where: str) -> list[Any]:
    try:
        values = inp.as_numpy().reshape(-1).tolist()
    except (ValueError, TypeError) as exc:  # shape and data disagree, ragged data, ...
        raise InvalidInput(f"{where}: data does not fit shape {inp.shape}: {exc}") from None
    return values


def _v2_queries(inp: Any, limits: Limits) -> list[str]:
    where = 'input "query"'
    if inp.datatype != "BYTES":
        raise InvalidInput(f"{where}: datatype must be BYTES, got {inp.datatype}")
    shape = list(inp.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInput(f"{where}: shape must be [n] (one query per row), got {shape}")
    values = _v2_values(inp, where)
    _check_batch(len(values), where, limits)
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"{where}[{i}]: query is not valid UTF-8") from None
        out.append(_check_query(v, f"{where}[{i}]"))
    return out


def _v2_top_k(inp: Any, limits: Limits) -> int:
    where = 'input "top_k"'
    if inp.datatype not in ("INT32", "INT64"):
        raise InvalidInput(f"{where}: datatype must be INT32 or INT64, got {inp.datatype}")
    if list(inp.shape) != [1]:
        raise InvalidInput(f"{where}: shape must be [1] (one top_k per request), got {inp.shape}")
    # JSON data stays a list (so 1.5 or true are refused, not cast); binary data is numpy
    values = inp.data if isinstance(inp.data, list) else _v2_values(inp, where)
    if len(values) != 1:
        raise InvalidInput(f"{where}: data must hold one integer, got {len(values)} values")
    return _check_top_k(values[0], where, limits)
