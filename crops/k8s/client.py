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


def _resource_version(obj: Any) -> str | None:
    if isinstance(obj, dict):
        return (obj.get("metadata") or {}).get("resourceVersion")
    return getattr(getattr(obj, "metadata", None), "resource_version", None)


def watch_until(
    what: str,
    read: Callable[[], T],
    list_call: Callable[..., Any],
    list_args: tuple[Any, ...],
    name: str,
    done: Callable[[T], bool],
    timeout_s: float,
    describe: Callable[[T], str] = str,
) -> T:
    """Read the object, then watch it (a field-selected watch from the version read) until
    `done(obj)`; `KubeTimeout` naming the last state after `timeout_s`.

    A watch sees every change as it happens, without a request per second per waiter. When the
    server ends the stream (its own timeout, or 410 Gone: the version is too old) the object is
    read again and watched anew, so a long wait survives watch expiry and API server restarts.
    """
    from kubernetes import watch

    deadline = time.monotonic() + timeout_s
    obj = read()
    while not done(obj):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last = describe(obj)
            raise KubeTimeout(f"{what}: not done after {timeout_s:g} s; last state: {last}")
        stream = watch.Watch()
        try:
            with api_errors(f"watching {what}"):
                for event in stream.stream(
                    list_call,
                    *list_args,
                    field_selector=f"metadata.name={name}",
                    resource_version=_resource_version(obj),
                    timeout_seconds=max(1, int(remaining + 0.999)),
                ):
                    if event["type"] == "DELETED":
                        raise KubeError(f"{what} was deleted while waiting", 404)
                    obj = event["object"]
                    if done(obj) or time.monotonic() >= deadline:
                        break
        except KubeError as exc:
            if exc.status != 410:
                raise
        finally:
            stream.stop()
        if not done(obj):
            obj = read()  # the stream ended: start again from the current version
    return obj


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`status.conditions` of an object keyed by type."""
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


__all__ = [
    "KubeError",
    "KubeTimeout",
    "api_client",
    "api_errors",
    "conditions",
    "watch_until",
]
