"""Applying a canary decision to the KServe InferenceService: the A/B job's one write.

`apply_decision` turns a decision's `action` (promote | rollback | hold, read from a dict, a
pydantic model or a dataclass) into a call on `crops.k8s.inference_service`: promote makes the
canary the only predictor, rollback sends all traffic back to the previous predictor and drops
the canary, hold changes nothing. Deciding is not done here (`crops.abtest`,
`crops.evaluate.sequential`); neither are deploys and canary rollouts (`inference_service.deploy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

ACTIONS: tuple[str, ...] = ("promote", "rollback", "hold")


def decision_action(decision: Any) -> str:
    """The `action` of a decision given as a mapping, a pydantic model or a dataclass.

    Raises TypeError for any other type and ValueError for a missing or unknown action.
    """
    if isinstance(decision, Mapping):
        fields = dict(decision)
    elif hasattr(decision, "model_dump"):
        fields = decision.model_dump(mode="json")
    elif dataclasses.is_dataclass(decision) and not isinstance(decision, type):
        fields = dataclasses.asdict(decision)
    else:
        raise TypeError(f"cannot read a decision of type {type(decision).__name__}")
    action = fields.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown decision action {action!r}")
    return action


def apply_decision(
    decision: Any,
    *,
    isvc: str,
    namespace: str,
    client: Any = None,
    mode: str = "auto",
) -> dict[str, Any]:
    """Apply a canary decision to the KServe InferenceService `namespace/isvc`.

    promote -> the canary becomes the only predictor; rollback -> all traffic back to the
    previous predictor and the canary dropped; hold -> nothing changes (the canary keeps its
    share for the next run). `client` is a kubernetes ApiClient (default: in-cluster, else the
    local kubeconfig); `mode` Standard | Serverless | auto (read off the object).

    Returns `{action, isvc, namespace, patched, canary_traffic_percent}`; a promote or rollback
    with no canary to act on changes nothing and is no failure: `patched` False and `noop`
    saying why. Raises `crops.k8s.client.KubeError` naming the object and the API's reason
    (a missing object, a refused call, a concurrent change: HTTP 409).
    """
    from crops.k8s.inference_service import InferenceServiceClient, canary_percent

    action = decision_action(decision)
    isvcs = InferenceServiceClient(client, mode=mode)
    result: dict[str, Any] = {"action": action, "isvc": isvc, "namespace": namespace}
    if action == "hold":
        obj = isvcs.get(isvc, namespace)
        return {**result, "patched": False, "canary_traffic_percent": canary_percent(obj)}
    change = (
        isvcs.promote(isvc, namespace) if action == "promote" else isvcs.rollback(isvc, namespace)
    )
    result |= {
        "patched": change["patched"],
        "canary_traffic_percent": canary_percent(change["object"]),
    }
    if not change["patched"]:
        result["noop"] = change["noop"]
    return result


__all__ = ["ACTIONS", "apply_decision", "decision_action"]
