"""Every rendering of the deploy artefacts (three overlays, four chart value sets) sent to a real
kube-apiserver as a server-side dry run, which validates built-in objects and the KubeRay and
KServe custom resources against their schemas; no field may be dropped on the way."""

from __future__ import annotations

import pytest
from support.cluster import RENDERINGS, relocate
from support.cluster import rendering as rendered
from support.deploy import RAY, by_kind, dropped, dry_run, for_server


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_object_passes_a_server_side_dry_run(rendering: str, dyn, namespace: str) -> None:
    objs = rendered(rendering)
    for obj in objs:
        sent = for_server(dyn, relocate(obj, namespace))
        stored = dry_run(dyn, sent, namespace)
        assert stored["kind"] == obj["kind"]
        lost = [p for p in dropped(sent, stored) if not p.startswith(".metadata.managedFields")]
        assert lost == [], f"{obj['kind']}/{obj['metadata']['name']}: the server dropped {lost}"
    # A dry run stores nothing.
    from kubernetes import client

    custom = client.CustomObjectsApi(dyn.client)
    assert custom.list_namespaced_custom_object(*RAY[:2], namespace, RAY[2])["items"] == []


def test_the_dry_run_rejects_a_mistyped_rayjob(dyn, namespace: str) -> None:
    """The CRD's schema is enforced: a wrong type is a 422, not a silent pass."""
    from kubernetes.dynamic.exceptions import DynamicApiError

    job = relocate(by_kind(rendered("helm:default"), "RayJob")["crops-train"], namespace)
    job["spec"]["backoffLimit"] = "three"
    with pytest.raises(DynamicApiError) as err:
        dry_run(dyn, job, namespace)
    assert err.value.status == 422
    assert "backoffLimit" in err.value.body.decode()


def test_the_dry_run_comparison_catches_a_misspelt_field(dyn, namespace: str) -> None:
    """A misspelt field is pruned without an error on 1.20; `dropped` must notice."""
    job = relocate(by_kind(rendered("helm:default"), "RayJob")["crops-index"], namespace)
    job["spec"]["ttlSecondAfterFinished"] = 60
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "securityContxt"
    ] = {"runAsNonRoot": True}
    stored = dry_run(dyn, job, namespace)
    lost = dropped(job, stored)
    assert ".spec.ttlSecondAfterFinished" in lost
    assert any(p.endswith("containers[0].securityContxt") for p in lost)
