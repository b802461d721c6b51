"""The KServe InferenceService of the retrieval endpoint: deploy, canary, promote, roll back.

KServe has two ways to run a canary, and a platform team picks one per cluster:

- **Standard** (raw Deployments, no Knative; KServe 0.20+): the new predictor goes in
  `spec.canary`, a list of `{trafficPercent, predictor}` whose predictor is named (KServe runs it
  as Deployment and Service `{isvc}-{name}-predictor`) and carries no autoscaling fields;
  promoting moves it into `spec.predictor` and clears the list, rolling back clears the list.
- **Serverless** (Knative revisions): the new predictor replaces `spec.predictor` with
  `canaryTrafficPercent`; KServe keeps the last rolled-out revision for the rest of the traffic.
  Promoting removes the percent (the new revision takes all), rolling back sets it to 0.

`mode="auto"` reads which one an existing object uses (a `spec.canary` list, or the
deployment-mode annotation). Promote and roll back read, change and replace the object with its
`resourceVersion`, so a concurrent writer makes the call fail (409) rather than be overwritten.

`deploy` never sends all traffic to an untested model unless told to (`promote_directly`): the
first deploy serves the control as the default predictor and the candidate as the canary, and
every change is followed by a wait for Ready for the spec as written (KServe's
observedGeneration), whose timeout names the object and every condition that is not True.
Promote and roll back with no canary change nothing and say so (`{"patched": False, "noop": ...}`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.k8s.client import (
    KubeError,
    KubeTimeout,
    api_client,
    api_errors,
    conditions,
    watch_until,
)
from crops.k8s.platform import Platform

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
Mode = Literal["Standard", "Serverless"]
# Values of the annotation that mean each mode (KServe renamed RawDeployment to Standard).
ANNOTATION_MODES: dict[str, Mode] = {
    "Standard": "Standard",
    "RawDeployment": "Standard",
    "Serverless": "Serverless",
    "Knative": "Serverless",
}
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class InferenceServiceSpec(BaseModel):
    """The retrieval endpoint: the crops image serving one model folder and its index. Pod
    security, labels, account, resources, volumes and port come from the platform description
    (`crops.k8s.platform`), the values the chart's own InferenceService is rendered from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DNS_LABEL)
    namespace: str = Field("crops", pattern=DNS_LABEL)
    model_path: str = Field(min_length=1)
    index_path: str = Field(min_length=1)
    mode: Mode = "Standard"
    image: str | None = Field(None, min_length=1, description="None: the platform's")
    canary_name: str = Field("candidate", pattern=DNS_LABEL, description="Standard mode")

    @property
    def url(self) -> str:
        """In-cluster base URL of the stable predictor (the A/B job's control arm)."""
        return f"http://{self.name}-predictor.{self.namespace}.svc.cluster.local"

    @property
    def canary_url(self) -> str:
        """In-cluster base URL of the Standard-mode canary (the A/B job's treatment arm)."""
        return f"http://{self.name}-{self.canary_name}-predictor.{self.namespace}.svc.cluster.local"


def predictor(spec: InferenceServiceSpec, platform: Platform | None = None) -> dict[str, Any]:
    """The predictor component: a custom container running `crops serve` on the spec's folders,
    laid out as the chart's predictors are."""
    p = platform or Platform.default(spec.namespace)
    serving, port = p.values.serving, p.values.ports.predictor
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": spec.image or p.image,
        "imagePullPolicy": p.pull_policy,
        "command": ["crops"],
        "args": [
            "serve",
            "--model",
            spec.model_path,
            "--index",
            spec.index_path,
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--name",
            serving.modelName,
        ],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "http1", "containerPort": port, "protocol": "TCP"}],
        # Ready only once the model and its index are loaded and belong together.
        "readinessProbe": {
            "httpGet": {"path": f"/v1/models/{serving.modelName}", "port": port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": port},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
        },
        "resources": p.resources(serving.resources),
        "securityContext": p.container_security_context(),
        "volumeMounts": [
            {"name": "artifacts", "mountPath": p.mount_path, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    log, log_url = serving.requestLog, p.request_log_url
    logger: dict[str, Any] = {}
    if log_url:  # KServe's payload logging: requests and responses as CloudEvents
        # serving.requestLog.url, else the chart's logsink Service (as the chart's predictors)
        logger = {"logger": {"mode": log.mode, "url": log_url}}
        if log.metadataHeaders:
            logger["logger"]["metadataHeaders"] = list(log.metadataHeaders)
    return {
        "serviceAccountName": p.service_account("predictor"),
        "automountServiceAccountToken": False,  # the predictor never calls the API
        **logger,
        # KServe puts these on the pods; the NetworkPolicies admit traffic by them.
        "labels": p.pod_labels("predictor"),
        "securityContext": p.pod_security_context(),
        "minReplicas": serving.minReplicas,
        "maxReplicas": serving.maxReplicas,
        "containers": [container],
        "volumes": [
            {
                "name": "artifacts",
                "persistentVolumeClaim": {"claimName": p.artifacts_pvc, "readOnly": True},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }


# Fields KServe refuses in a Standard-mode canary predictor (its replicas follow the traffic).
AUTOSCALING_FIELDS = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling")


def canary_predictor(
    spec: InferenceServiceSpec, platform: Platform | None = None
) -> dict[str, Any]:
    """The predictor as a Standard-mode canary: named, without autoscaling fields."""
    body = {k: v for k, v in predictor(spec, platform).items() if k not in AUTOSCALING_FIELDS}
    return {"name": spec.canary_name, **body}


def annotations(mode: Mode) -> dict[str, str]:
    """The deployment-mode annotations, as the chart writes them (Standard under KServe's older
    name RawDeployment, which every 0.x release understands; Serverless with tag routing, which
    gives the A/B job the prev- and latest- URLs)."""
    if mode == "Serverless":
        return {MODE_ANNOTATION: "Serverless", "serving.kserve.io/enable-tag-routing": "true"}
    return {MODE_ANNOTATION: "RawDeployment"}


def manifest(
    spec: InferenceServiceSpec,
    platform: Platform | None = None,
    canary: InferenceServiceSpec | None = None,
    canary_percent: int | None = None,
) -> dict[str, Any]:
    """The InferenceService object for `spec`; with `canary` (Standard mode), the candidate in
    `spec.canary` taking `canary_percent` of the traffic beside it."""
    p = platform or Platform.default(spec.namespace)
    body: dict[str, Any] = {"predictor": predictor(spec, p)}
    if canary is not None:
        if spec.mode != "Standard":
            raise ValueError("a canary at creation needs Standard mode (Knative makes revisions)")
        percent = _check_percent(
            p.values.serving.canaryTrafficPercent if canary_percent is None else canary_percent
        )
        body["canary"] = [{"trafficPercent": percent, "predictor": canary_predictor(canary, p)}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "crops",
                "app.kubernetes.io/instance": p.release,
                "app.kubernetes.io/component": p.values.roles["predictor"].component,
                "app.kubernetes.io/managed-by": "crops",
            },
            "annotations": annotations(spec.mode),
        },
        "spec": body,
    }


def mode_of(obj: dict[str, Any]) -> Mode:
    """Which canary mechanism an existing InferenceService uses."""
    if (obj.get("spec") or {}).get("canary"):
        return "Standard"
    annotation = ((obj.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION)
    if annotation in ANNOTATION_MODES:
        return ANNOTATION_MODES[annotation]
    if "canaryTrafficPercent" in ((obj.get("spec") or {}).get("predictor") or {}):
        return "Serverless"
    return "Standard"


def canary_percent(obj: dict[str, Any]) -> int | None:
    """The traffic share the canary gets now (None when there is no canary)."""
    spec = obj.get("spec") or {}
    if spec.get("canary"):
        return int(spec["canary"][0]["trafficPercent"])
    percent = (spec.get("predictor") or {}).get("canaryTrafficPercent")
    return None if percent is None else int(percent)


def _check_percent(percent: int) -> int:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


# How long a deploy waits, by default, for each change to be Ready (image pull, model and index
# load); a timeout names the object and KServe's own account of what is not ready.
DEFAULT_WAIT_S = 900.0


def predictor_url(name: str, namespace: str, tag: str = "") -> str:
    """In-cluster URL of predictor `name`, optionally behind a Knative tag (as the chart's
    `crops.predictorUrl` writes it)."""
    prefix = f"{tag}-" if tag else ""
    return f"http://{prefix}{name}-predictor.{namespace}.svc.cluster.local"


def serving_urls(spec: InferenceServiceSpec) -> dict[str, str]:
    """The two predictors InferenceService `spec.name` serves during a canary, by in-cluster URL:
    `control` (the default predictor) and `treatment` (the canary). Standard: the predictor's
    Service and the canary's own Service; Serverless: the Knative tag routes `prev-` (the last
    rolled-out revision) and `latest-` (the canary revision)."""
    if spec.mode == "Serverless":
        return {
            "control": predictor_url(spec.name, spec.namespace, "prev"),
            "treatment": predictor_url(spec.name, spec.namespace, "latest"),
        }
    return {"control": spec.url, "treatment": spec.canary_url}


def _stale(obj: dict[str, Any]) -> tuple[int, int] | None:
    """(generation, observedGeneration) when KServe has not yet seen the latest spec."""
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and observed is not None and int(observed) < int(generation):
        return int(generation), int(observed)
    return None


def is_ready(obj: dict[str, Any]) -> bool:
    """Ready=True for the spec as it is now: KServe has observed this generation, every canary
    in `spec.canary` is ready (when KServe reports canaryStatuses) and the predictor's latest
    revision is its ready one (when it reports revisions, Serverless)."""
    if _stale(obj) or conditions(obj).get("Ready", {}).get("status") != "True":
        return False
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    reported = {s.get("name"): s for s in status.get("canaryStatuses") or []}
    wanted = [c.get("predictor", {}).get("name") for c in spec.get("canary") or []]
    if reported and not all((reported.get(n) or {}).get("ready") for n in wanted):
        return False
    revisions = (status.get("components") or {}).get("predictor") or {}
    created = revisions.get("latestCreatedRevision")
    return not created or created == revisions.get("latestReadyRevision")


def status_report(obj: dict[str, Any]) -> str:
    """KServe's account of the object, for a timeout: every condition that is not True (type,
    status, reason, message), the canaries that are not ready and each component's revisions
    and traffic."""
    status = obj.get("status") or {}
    parts: list[str] = []
    if stale := _stale(obj):
        parts.append(
            f"KServe has not observed generation {stale[0]} yet (observedGeneration {stale[1]})"
        )
    conds = status.get("conditions") or []
    if not conds:
        parts.append("no status conditions yet (is the KServe controller running?)")
    elif "Ready" not in conditions(obj):
        parts.append("no Ready condition yet")
    for c in conds:
        if c.get("status") != "True":
            parts.append(
                f"{c.get('type')}={c.get('status')} reason={c.get('reason', '')} "
                f"message={c.get('message', '')}"
            )
    for s in status.get("canaryStatuses") or []:
        if not s.get("ready"):
            failure = (s.get("modelStatus") or {}).get("lastFailureInfo") or {}
            why = f": {failure.get('reason', '')} {failure.get('message', '')}" if failure else ""
            parts.append(
                f"canary {s.get('name')} ({s.get('trafficPercent')} %) not ready{why}".rstrip()
            )
    for component, cs in sorted((status.get("components") or {}).items()):
        fields = [
            f"{key}={cs[key]}"
            for key in (
                "latestCreatedRevision",
                "latestReadyRevision",
                "latestRolledoutRevision",
                "previousRolledoutRevision",
            )
            if cs.get(key)
        ]
        traffic = [
            f"{t.get('tag') or t.get('revisionName') or 'latest'} {t.get('percent')} %"
            for t in cs.get("traffic") or []
        ]
        if traffic:
            fields.append("traffic " + ", ".join(traffic))
        parts.append(f"components.{component}: " + (", ".join(fields) or "no revisions yet"))
    return "; ".join(parts) or "Ready=True"


class InferenceServiceClient:
    """Deploys and steers the retrieval InferenceService; `mode` "auto" reads it off the object.
    Predictors are laid out from `platform` (default: the chart's defaults in the spec's
    namespace; a cluster's own is `Platform.from_cluster`)."""

    def __init__(
        self,
        client: ApiClient | None = None,
        mode: Mode | Literal["auto"] = "auto",
        platform: Platform | None = None,
    ) -> None:
        from kubernetes.client import CustomObjectsApi

        if mode not in ("auto", "Standard", "Serverless"):
            raise ValueError(f"mode must be auto, Standard or Serverless, got {mode!r}")
        self.api = CustomObjectsApi(client if client is not None else api_client())
        self.mode = mode
        self.platform = platform

    # ------------------------------------------------------------------ plain API calls
    def get(self, name: str, namespace: str) -> dict[str, Any]:
        with api_errors(f"reading InferenceService {namespace}/{name}"):
            return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def find(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            return self.get(name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def exists(self, name: str, namespace: str) -> bool:
        return self.find(name, namespace) is not None

    def _platform(self, spec: InferenceServiceSpec) -> Platform:
        return self.platform or Platform.default(spec.namespace)

    def create(
        self,
        spec: InferenceServiceSpec,
        canary: InferenceServiceSpec | None = None,
        canary_percent: int | None = None,
    ) -> dict[str, Any]:
        """Create the object `manifest(spec, platform, canary, canary_percent)`."""
        body = manifest(spec, self._platform(spec), canary=canary, canary_percent=canary_percent)
        with api_errors(f"creating InferenceService {spec.namespace}/{spec.name}"):
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, spec.namespace, PLURAL, body
            )

    def _patch(self, name: str, namespace: str, body: Any, what: str) -> dict[str, Any]:
        with api_errors(f"{what} on InferenceService {namespace}/{name}"):
            return self.api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body
            )

    def _replace(self, obj: dict[str, Any], what: str) -> dict[str, Any]:
        meta = obj["metadata"]
        with api_errors(f"{what} on InferenceService {meta['namespace']}/{meta['name']}"):
            return self.api.replace_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], obj
            )

    def _mode(self, obj: dict[str, Any]) -> Mode:
        return mode_of(obj) if self.mode == "auto" else self.mode

    def _mode_for(self, obj: dict[str, Any], spec: InferenceServiceSpec) -> Mode:
        """The object's mode, which the candidate must share (KServe keeps an object's mode)."""
        mode = self._mode(obj)
        if mode != spec.mode:
            raise KubeError(
                f"InferenceService {spec.namespace}/{spec.name} runs in {mode} mode; the "
                f"candidate asks for {spec.mode} (KServe does not change an object's mode)"
            )
        return mode

    # ------------------------------------------------------------------ the rollout
    def roll_out(
        self,
        candidate: InferenceServiceSpec,
        canary_percent: int,
        obj: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Roll `candidate` out on the existing object (`obj`, else read) as the canary taking
        `canary_percent` of the traffic: Standard, `spec.canary` (replacing an earlier canary);
        Serverless, the next revision with `canaryTrafficPercent`. A merge patch of the spec
        only, so KServe's status writes meanwhile do not make it fail."""
        percent = _check_percent(canary_percent)
        obj = obj or self.get(candidate.name, candidate.namespace)
        p = self._platform(candidate)
        if self._mode_for(obj, candidate) == "Standard":
            new = {"trafficPercent": percent, "predictor": canary_predictor(candidate, p)}
            body: dict[str, Any] = {"spec": {"canary": [new]}}
        else:
            new = {**predictor(candidate, p), "canaryTrafficPercent": percent}
            body = {"spec": {"predictor": new}}
        return self._patch(
            candidate.name,
            candidate.namespace,
            body,
            f"rolling the candidate out as a {percent} % canary",
        )

    def replace_predictor(
        self, candidate: InferenceServiceSpec, obj: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Serve `candidate` with all traffic at once, no canary (`promote_directly`)."""
        obj = obj or self.get(candidate.name, candidate.namespace)
        self._mode_for(obj, candidate)
        # null removes: the canary list, and a Serverless canary share
        new = {**predictor(candidate, self._platform(candidate)), "canaryTrafficPercent": None}
        return self._patch(
            candidate.name,
            candidate.namespace,
            {"spec": {"predictor": new, "canary": None}},
            "replacing the predictor (all traffic, no canary)",
        )

    def deploy(
        self,
        candidate: InferenceServiceSpec,
        canary_percent: int | None = None,
        *,
        control: InferenceServiceSpec | None = None,
        wait_s: float = DEFAULT_WAIT_S,
        promote_directly: bool = False,
    ) -> dict[str, Any]:
        """Put `candidate` in front of users as a canary, never at 100 % untested, and wait
        for Ready after every change (`KubeTimeout` naming the object and KServe's conditions).

        - No InferenceService yet: `control` serves as the default predictor and the candidate
          as the canary at `canary_percent`. Standard: one object with both; Serverless: the
          control is created, Ready, then the candidate rolls out as the next revision.
        - An InferenceService: the candidate rolls out as its canary (`roll_out`), beside the
          predictor it serves now.
        - `promote_directly=True`: the candidate takes all traffic with no canary (created
          alone, or replacing the predictor); `canary_percent` must then be unset.

        Returns the object as it is once Ready.
        """
        name, ns = candidate.name, candidate.namespace
        where = f"InferenceService {ns}/{name}"
        if not wait_s or wait_s <= 0:
            raise ValueError(f"wait_s must be > 0 (a deploy waits for Ready), got {wait_s!r}")
        if promote_directly:
            if canary_percent not in (None, 100):
                raise ValueError(
                    "promote_directly gives the candidate all traffic: leave canary_percent "
                    f"unset, got {canary_percent!r}"
                )
        elif canary_percent is None or _check_percent(canary_percent) == 100:
            raise ValueError(
                f"canary_percent={canary_percent!r} would send all traffic to an untested "
                "model: give a canary share below 100 (the A/B test promotes it), or "
                "promote_directly=True to serve it at once"
            )
        if control is not None and (control.name, control.namespace, control.mode) != (
            name,
            ns,
            candidate.mode,
        ):
            raise ValueError("control and candidate must name the same InferenceService and mode")
        current = self.find(name, ns)
        if current is None and promote_directly:
            self.create(candidate)
            return self._wait(candidate, wait_s, f"{where} created with the candidate alone")
        if current is None:
            if control is None:
                raise ValueError(
                    f"{where} does not exist yet: a first deploy needs the control model "
                    f"(served as the default predictor, the candidate as a {canary_percent} % "
                    "canary); give control=..., or promote_directly=True"
                )
            if candidate.mode == "Standard":
                self.create(control, canary=candidate, canary_percent=canary_percent)
                return self._wait(
                    candidate,
                    wait_s,
                    f"{where} created with the control and a {canary_percent} % canary",
                )
            self.create(control)
            current = self._wait(control, wait_s, f"{where} created with the control")
        if promote_directly:
            self.replace_predictor(candidate, current)
            return self._wait(candidate, wait_s, f"{where}: the candidate took all traffic")
        assert canary_percent is not None
        self.roll_out(candidate, canary_percent, current)
        return self._wait(
            candidate, wait_s, f"{where}: the candidate rolled out as a {canary_percent} % canary"
        )

    def _wait(self, spec: InferenceServiceSpec, wait_s: float, done: str) -> dict[str, Any]:
        try:
            return self.wait_ready(spec.name, spec.namespace, wait_s)
        except KubeTimeout as exc:
            raise KubeTimeout(f"{done}, but not Ready: {exc}") from exc

    def set_canary_traffic(self, name: str, namespace: str, percent: int) -> dict[str, Any]:
        """Give the running canary `percent` of the traffic (0..100)."""
        percent = _check_percent(percent)
        obj = self.get(name, namespace)
        if self._mode(obj) == "Serverless":
            body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
            return self._patch(name, namespace, body, f"setting canaryTrafficPercent={percent}")
        obj = copy.deepcopy(obj)
        if not (obj.get("spec") or {}).get("canary"):
            raise KubeError(f"InferenceService {namespace}/{name} has no canary (spec.canary)")
        obj["spec"]["canary"][0]["trafficPercent"] = percent
        return self._replace(obj, f"setting the canary's trafficPercent={percent}")

    @staticmethod
    def _noop(obj: dict[str, Any], why: str) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        where = f"InferenceService {meta.get('namespace')}/{meta.get('name')}"
        return {"patched": False, "noop": f"{where} has no canary to {why}", "object": obj}

    def promote(self, name: str, namespace: str) -> dict[str, Any]:
        """Make the canary the only predictor (all traffic): `{"patched": True, "object": ...}`.
        With no canary nothing changes: `{"patched": False, "noop": "<why>", "object": ...}`."""
        obj = copy.deepcopy(self.get(name, namespace))
        spec = obj.setdefault("spec", {})
        if self._mode(obj) == "Serverless":
            if "canaryTrafficPercent" not in spec.get("predictor", {}):
                return self._noop(obj, "promote (no canaryTrafficPercent): nothing changed")
            spec["predictor"].pop("canaryTrafficPercent")
            return {"patched": True, "object": self._replace(obj, "promoting the canary")}
        if not spec.get("canary"):
            return self._noop(obj, "promote (spec.canary is empty): nothing changed")
        # KServe retargets the stable predictor to the canary's Deployment (no restart); the
        # stable predictor keeps its autoscaling settings.
        kept = {k: v for k, v in spec["predictor"].items() if k in AUTOSCALING_FIELDS}
        spec["predictor"] = {**spec.pop("canary")[0]["predictor"], **kept}
        return {"patched": True, "object": self._replace(obj, "promoting the canary")}

    def rollback(self, name: str, namespace: str) -> dict[str, Any]:
        """Send all traffic back to the previous predictor and drop the canary; the same result
        shape as `promote`, a no-op when there is no canary."""
        obj = copy.deepcopy(self.get(name, namespace))
        spec = obj.setdefault("spec", {})
        if self._mode(obj) == "Serverless":
            if "canaryTrafficPercent" not in spec.get("predictor", {}):
                return self._noop(obj, "roll back (no canaryTrafficPercent): nothing changed")
            spec["predictor"]["canaryTrafficPercent"] = 0
            return {"patched": True, "object": self._replace(obj, "rolling the canary back")}
        if not spec.get("canary"):
            return self._noop(obj, "roll back (spec.canary is empty): nothing changed")
        spec.pop("canary")
        return {"patched": True, "object": self._replace(obj, "rolling the canary back")}

    def wait_ready(self, name: str, namespace: str, timeout_s: float) -> dict[str, Any]:
        """Wait until the object is Ready for its current spec (`is_ready`); `KubeTimeout`
        naming it and KServe's conditions (`status_report`) after `timeout_s`."""
        return watch_until(
            f"InferenceService {namespace}/{name} Ready",
            lambda: self.get(name, namespace),
            self.api.list_namespaced_custom_object,
            (GROUP, VERSION, namespace, PLURAL),
            name,
            is_ready,
            timeout_s,
            describe=status_report,
        )


def deploy(
    candidate: InferenceServiceSpec,
    canary_percent: int | None = None,
    *,
    control: InferenceServiceSpec | None = None,
    platform: Platform | None = None,
    client: ApiClient | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    promote_directly: bool = False,
) -> dict[str, Any]:
    """Roll `candidate` out as a canary beside `control` (see `InferenceServiceClient.deploy`),
    waiting for Ready after every change; returns the object once Ready."""
    isvc = InferenceServiceClient(client, platform=platform)
    return isvc.deploy(
        candidate,
        canary_percent,
        control=control,
        wait_s=wait_s,
        promote_directly=promote_directly,
    )


def set_canary_traffic(
    name: str, namespace: str, percent: int, client: ApiClient | None = None
) -> dict[str, Any]:
    """Give the canary of InferenceService `name` `percent` of the traffic (mode read off it)."""
    return InferenceServiceClient(client).set_canary_traffic(name, namespace, percent)


__all__ = [
    "DEFAULT_WAIT_S",
    "GROUP",
    "PLURAL",
    "VERSION",
    "InferenceServiceClient",
    "InferenceServiceSpec",
    "KubeError",
    "KubeTimeout",
    "canary_percent",
    "canary_predictor",
    "deploy",
    "is_ready",
    "manifest",
    "mode_of",
    "predictor",
    "predictor_url",
    "serving_urls",
    "set_canary_traffic",
    "status_report",
]
