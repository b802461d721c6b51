"""Inference payloads inside the logged events: the request body's queries and `top_k`s and
the response body's ranked video ids and scores, in KServe's v1 and v2 protocols as `crops
serve` speaks them. Anything else is a `PayloadError` naming what and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Result = tuple[np.ndarray, np.ndarray]  # one query's (video ids, scores)


class PayloadError(ValueError):
    """A JSON payload that is not a usable inference request or answer."""


@dataclass
class Inference:
    """What the request body asked for."""

    protocol: str
    queries: list[str]
    top_ks: list[int | None]


def _int_or_none(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{where}: top_k must be an integer, got {type(value).__name__}")
    return value


def parse_request_body(data: Any) -> Inference | None:
    """Queries and top_ks of a v1 or v2 body; None when it is not an inference call."""
    if not isinstance(data, dict):
        return None
    if "instances" in data:
        instances = data["instances"]
        if not isinstance(instances, list) or not instances:
            raise PayloadError("request body: instances must be a non-empty list")
        queries, top_ks = [], []
        for i, inst in enumerate(instances):
            if isinstance(inst, str):  # crops serve takes a bare query string too
                inst = {"query": inst}
            if not isinstance(inst, dict):
                raise PayloadError(f"request body: instances[{i}] must be an object")
            query = inst.get("query")
            if not isinstance(query, str):
                raise PayloadError(f"request body: instances[{i}].query must be a string")
            queries.append(query)
            top_ks.append(_int_or_none(inst.get("top_k"), f"request body: instances[{i}]"))
        return Inference("v1", queries, top_ks)
    if "inputs" in data:
        inputs = data["inputs"]
        if not isinstance(inputs, list):
            raise PayloadError("request body: inputs must be a list")
        by_name = {t.get("name"): t for t in inputs if isinstance(t, dict)}
        query = by_name.get("query")
        values = query.get("data") if query else None
        if not isinstance(values, list) or not all(isinstance(q, str) for q in values):
            raise PayloadError("request body: inputs 'query' must hold a list of strings")
        k: Any = None
        if "top_k" in by_name:
            kd = by_name["top_k"].get("data")
            k = kd[0] if isinstance(kd, list) and len(kd) == 1 else kd
        elif isinstance(data.get("parameters"), dict):
            k = data["parameters"].get("top_k")
        k = _int_or_none(k, "request body: top_k")
        return Inference("v2", list(values), [k] * len(values))
    return None


def _row(ids: Any, scores: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        v = np.asarray(ids, dtype=np.int64)
        s = np.asarray(scores, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise PayloadError(f"{where}: video_ids must be integers and scores numbers") from None
    if v.ndim != 1 or s.ndim != 1 or len(v) != len(s):
        raise PayloadError(f"{where}: video_ids and scores must be lists of one length")
    keep = v >= 0  # v2 pads a row the index could not fill with -1
    return v[keep], s[keep]


def parse_response_body(data: Any, n: int) -> tuple[list[Result], str | None]:
    """(per query (video ids, scores), the body's model hash if any) of a v1 or v2 answer."""
    if not isinstance(data, dict):
        raise PayloadError("response body: not a JSON object with predictions or outputs")
    body_hash = data.get("model_hash")
    if body_hash is None and isinstance(data.get("parameters"), dict):
        body_hash = data["parameters"].get("model_hash")
    body_hash = body_hash if isinstance(body_hash, str) and body_hash else None
    if "predictions" in data:
        preds = data["predictions"]
        if not isinstance(preds, list) or len(preds) != n:
            got = len(preds) if isinstance(preds, list) else type(preds).__name__
            raise PayloadError(f"response body: {got} predictions for {n} instances")
        out = []
        for i, p in enumerate(preds):
            if not isinstance(p, dict):
                raise PayloadError(f"response body: predictions[{i}] must be an object")
            out.append(_row(p.get("video_ids"), p.get("scores"), f"response predictions[{i}]"))
        return out, body_hash
    if "outputs" in data and isinstance(data["outputs"], list):
        by_name = {t.get("name"): t for t in data["outputs"] if isinstance(t, dict)}
        if "video_ids" not in by_name or "scores" not in by_name:
            raise PayloadError("response body: outputs need video_ids and scores")
        ids, scores = by_name["video_ids"].get("data"), by_name["scores"].get("data")
        if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores):
            raise PayloadError("response body: outputs video_ids and scores must be equal lists")
        if n == 0 or len(ids) % n:
            raise PayloadError(f"response body: {len(ids)} outputs do not split into {n} rows")
        k = len(ids) // n
        out = [
            _row(ids[i * k : (i + 1) * k], scores[i * k : (i + 1) * k], f"response outputs row {i}")
            for i in range(n)
        ]
        return out, body_hash
    raise PayloadError("response body: no predictions (v1) or outputs (v2)")
