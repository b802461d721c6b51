"""CloudEvents as KServe's payload logger sends them: parsing binary- and structured-mode
events into `Event`s, with a refusal (`EventError`: HTTP status, the outcome counted, a message
naming what and where) for anything else. The sink (`crops.serve.logsink`) pairs them; what the
agent sends, read from KServe's code, is in that module's docstring.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


class EventError(Exception):
    """A refused event: HTTP status, the outcome counted, a message naming what and where."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status, self.outcome, self.message = status, outcome, message


@dataclass
class Event:
    """One CloudEvent as the sink uses it."""

    id: str
    type: str
    source: str
    time: datetime | None
    isvc: str
    namespace: str
    component: str
    endpoint: str
    metadata: dict[str, list[str]]  # lower-case header name -> values
    data: Any  # the parsed JSON payload; None for an empty body
    arrival: datetime
    arrival_mono: float
    size: int = 0  # the body's bytes (what waiting for the pair holds in memory)

    @property
    def is_request(self) -> bool:
        return self.type == REQUEST_TYPE


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    ts = None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            ts = datetime.fromisoformat(value)
    if ts is None or ts.tzinfo is None:
        shown = value[:60] if isinstance(value, str) else value
        raise EventError(400, "bad_ce_time", f"{where}: {shown!r} is not an RFC 3339 time")
    return ts.astimezone(UTC)


def _parse_metadata(value: str | None, where: str) -> dict[str, list[str]]:
    """KServe's ``metadata`` extension: a JSON object of header name -> list of values."""
    if value is None or value.strip() in ("", "null"):
        return {}
    obj: Any = None
    for text in (value, urllib.parse.unquote(value)):  # percent-encoded by some SDK versions
        try:
            obj = json.loads(text)
            break
        except ValueError:
            continue
    if not isinstance(obj, dict):
        raise EventError(
            400, "bad_metadata", f"{where}: not a JSON object of header lists: {value[:80]!r}"
        )
    out: dict[str, list[str]] = {}
    for key, values in obj.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise EventError(
                400, "bad_metadata", f"{where}: header {key!r} must map to a list of strings"
            )
        out.setdefault(str(key).lower(), []).extend(values)
    return out


def _parse_json(body: bytes, where: str) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(400, "not_json", f"{where}: not JSON ({exc})") from None


def _check_attributes(ce_id: Any, ce_type: Any, spec: Any, prefix: str) -> tuple[str, str]:
    if spec not in (None, "1.0"):
        raise EventError(
            400, "bad_specversion", f"{prefix}specversion {str(spec)[:20]!r}: only 1.0 is read"
        )
    if not isinstance(ce_id, str) or not ce_id:
        raise EventError(400, "missing_ce_id", f"{prefix}id is missing: every event needs one")
    if not isinstance(ce_type, str) or not ce_type:
        raise EventError(400, "missing_ce_type", f"{prefix}type is missing")
    if ce_type not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise EventError(
            400,
            "unknown_ce_type",
            f"{prefix}type {ce_type[:80]!r} is not {REQUEST_TYPE} or {RESPONSE_TYPE}",
        )
    return ce_id, ce_type


def parse_binary(headers: dict[str, str], body: bytes, arrival: datetime, mono: float) -> Event:
    """A binary-mode event: attributes in ``ce-*`` headers (lower-case keys), payload in body."""
    ce_id, ce_type = _check_attributes(
        headers.get("ce-id"), headers.get("ce-type"), headers.get("ce-specversion"), "header ce-"
    )
    return Event(
        id=ce_id,
        type=ce_type,
        source=headers.get("ce-source", ""),
        time=_parse_time(headers.get("ce-time"), "header ce-time"),
        isvc=headers.get("ce-inferenceservicename", ""),
        namespace=headers.get("ce-namespace", ""),
        component=headers.get("ce-component", ""),
        endpoint=headers.get("ce-endpoint", ""),
        metadata=_parse_metadata(headers.get("ce-metadata"), "header ce-metadata"),
        data=_parse_json(body, "body"),
        arrival=arrival,
        arrival_mono=mono,
        size=len(body),
    )


def parse_structured(body: bytes, arrival: datetime, mono: float) -> Event:
    """A structured-mode event: one JSON object with the attributes and ``data``."""
    env = _parse_json(body, "body (application/cloudevents+json)")
    if not isinstance(env, dict):
        raise EventError(400, "bad_envelope", "body: a structured CloudEvent must be a JSON object")
    ce_id, ce_type = _check_attributes(
        env.get("id"), env.get("type"), env.get("specversion"), "structured event: "
    )
    if "data_base64" in env:
        try:
            raw = base64.b64decode(str(env["data_base64"]), validate=True)
        except ValueError:
            raise EventError(400, "bad_envelope", "data_base64: not base64") from None
        data = _parse_json(raw, "data_base64")
    else:
        data = env.get("data")
        if isinstance(data, str):  # a JSON payload sent as a string
            data = _parse_json(data.encode(), "data")

    def attr(name: str) -> str:
        value = env.get(name, "")
        return value if isinstance(value, str) else str(value)

    metadata = env.get("metadata")
    if isinstance(metadata, dict):
        metadata = json.dumps(metadata)
    return Event(
        id=ce_id,
        type=ce_type,
        source=attr("source"),
        time=_parse_time(env.get("time"), "time"),
        isvc=attr("inferenceservicename"),
        namespace=attr("namespace"),
        component=attr("component"),
        endpoint=attr("endpoint"),
        metadata=_parse_metadata(metadata, "metadata"),
        data=data,
        arrival=arrival,
        arrival_mono=mono,
        size=len(body),
    )
