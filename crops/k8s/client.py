"""The one way crops talks to the Kubernetes API: configuration, errors and status waits.

Every client in `crops.k8s` takes an optional `kubernetes.client.ApiClient`; without one it loads
the in-cluster service account, else the local kubeconfig. API failures become `KubeError` with
the object, the verb and the server's reason, so a pipeline log says what was refused and why.
The `kubernetes` package is imported inside functions so that importing `crops.k8s` stays cheap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

T = TypeVar("T")


class KubeError(RuntimeError):
    """The Kubernetes API refused or could not be reached; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeTimeout(KubeError):
    """A wait ran out of time; the message names the object and its last observed state."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """An ApiClient from `kubeconfig` if given, else in-cluster, else the default kubeconfig."""
    from kubernetes import client, config

    try:
        if kubeconfig is None:
            try:
                config.load_incluster_config()
                return client.ApiClient()
            except config.ConfigException:
                pass
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        return client.ApiClient(cfg)
    except (config.ConfigException, OSError) as exc:
        where = kubeconfig or "in-cluster or ~/.kube/config"
        raise KubeError(f"no usable Kubernetes configuration ({where}): {exc}") from exc


def _reason(body: str | None) -> str:
    """The server's Status message when the body is one, else the body itself (shortened)."""
    if not body:
        return ""
    try:
        return str(json.loads(body).get("message", body))[:800]
    except (ValueError, AttributeError):
        return body.strip()[:800]


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Turn the client's exceptions into `KubeError("<what> failed: HTTP 403 Forbidden: ...")`."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise KubeError(
            f"{what} failed: HTTP {exc.status} {exc.reason}: {_reason(exc.body)}", exc.status
        ) from exc
    except (HTTPError, OSError) as exc:
        raise KubeError(f"{what}: the API server is unreachable: {exc}") from exc


def wait_for(
    what: str,
    read: Callable[[], T],
    done: Callable[[T], bool],
    timeout_s: float,
    poll_s: float = 1.0,
    describe: Callable[[T], str] = str,
) -> T:
    """Poll `read()` until `done(value)`; `KubeTimeout` naming the last state after `timeout_s`.

    Polling (not a watch) because a wait must survive watch expiry and API server restarts;
    one GET per second per waiting component is nothing next to a controller's load.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            last = describe(value)
            raise KubeTimeout(f"{what}: not done after {timeout_s:g} s; last state: {last}")
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`status.conditions` of an object keyed by type."""
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


__all__ = ["KubeError", "KubeTimeout", "api_client", "api_errors", "conditions", "wait_for"]
