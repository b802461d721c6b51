"""The KServe InferenceService's canary traffic: the one knob the A/B job turns.

KServe rolls a new predictor out as a canary next to the last ready revision and splits traffic
by `spec.predictor.canaryTrafficPercent`: 100 promotes the canary (the controller makes it the
default revision), 0 sends everything back to the previous one. The `kubernetes` package is
imported inside the functions so that importing `crops.k8s` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"


class KubeError(RuntimeError):
    """The Kubernetes API refused or could not be reached; the message says which and why."""


def custom_objects_api() -> CustomObjectsApi:
    """A CustomObjectsApi from the in-cluster service account, else from the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise KubeError(
                f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}"
            ) from exc
    return client.CustomObjectsApi()


def set_canary_traffic(
    name: str, namespace: str, percent: int, api: CustomObjectsApi | None = None
) -> dict[str, Any]:
    """Merge-patch `spec.predictor.canaryTrafficPercent` of InferenceService `name`.

    Returns the patched object. Raises `ValueError` for a percent outside 0..100 and `KubeError`
    naming the object and the API's reason when the patch fails (missing object, RBAC, schema).
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be within 0..100, got {percent}")
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api = api if api is not None else custom_objects_api()
    body = {"spec": {"predictor": {"canaryTrafficPercent": int(percent)}}}
    try:
        return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
    except ApiException as exc:
        raise KubeError(
            f"patching InferenceService {namespace}/{name} canaryTrafficPercent={percent} "
            f"failed: HTTP {exc.status} {exc.reason}: {(exc.body or '').strip()[:500]}"
        ) from exc
    except (HTTPError, OSError) as exc:
        raise KubeError(
            f"patching InferenceService {namespace}/{name}: the API server is unreachable: {exc}"
        ) from exc


__all__ = ["GROUP", "PLURAL", "VERSION", "KubeError", "custom_objects_api", "set_canary_traffic"]
