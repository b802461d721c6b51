"""The preflight of `crops pipeline submit`: is everything the run's pods need where they run?

KFP runs a pipeline's pods in one namespace: its own (`kubeflow`) when standalone, the user's
profile namespace when multi-user. Those pods mount the artifacts PVC, run as the pipeline's
ServiceAccount, read the platform description (ConfigMap `crops-platform`) and, when LLM
synthesis through a server was asked for, take the LLM endpoint and key from the Secret
`crops-llm`; the RayJobs, the InferenceService and vLLM they create go to the same namespace
(the pipeline's `namespace` parameter), since the PVC is shared by name within it. A missing
object there does not fail a run cleanly: a pod waits on a missing PVC or Secret, or a task
fails late. `check` looks before the run exists and lists every problem at once, each naming
the object's kind, name and namespace and how to create it (docs/kind.md, "Where the
pipeline's pods run").

What it checks, with the caller's own credentials (their kubeconfig):

- the namespace exists (skipped with a note where the caller may not `get namespaces`);
- the ServiceAccount, the ConfigMap `crops-platform`, the artifacts PVC (the compiled
  pipeline's, and the one the platform description names when it can be read; the chart's
  default `crops-artifacts` otherwise) exist; a read the caller may not make is a problem too,
  since nothing can then be confirmed (`--skip-preflight` submits without these checks);
- with `llm`: the Secret `crops-llm` exists and has non-empty keys `endpoint` and `api-key`
  (only `api-key` when the endpoint comes from elsewhere: an explicit `llm_endpoint` or
  `serve_vllm`; the pod mounts the key either way and vLLM reads it). Reading a Secret's keys
  needs `get secrets`; without it the check is skipped with a note. Values are never shown;
- the caller's rights (SelfSubjectAccessReview, which every authenticated user may ask): the
  caller does not create the run's pods (KFP's workflow controller does, as the run's
  ServiceAccount), so `create pods` says nothing; what the caller needs and can be checked is
  read access to the objects above (the reads themselves) and, on multi-user KFP, `create` on
  `runs.pipelines.kubeflow.org` in the namespace, the check KFP's API server makes;
- the ServiceAccount's rights, the key rules of the chart's `crops-pipeline` Role (create
  RayJobs, create InferenceServices, get the ConfigMap `crops-platform`): a SubjectAccessReview,
  which the caller may not be allowed to create (a cluster-wide right); then it is skipped with
  a note. Whether the account also holds KFP's own runner rights (Argo's task results, the
  launcher's ConfigMap) depends on the KFP version and is not checked; docs/kind.md binds them.

An unreachable API server raises `PreflightUnreachable` at the first call; every request has a
timeout, so the preflight never hangs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crops.k8s.client import KubeError, _reason
from crops.k8s.platform import CONFIGMAP, CONFIGMAP_KEY, Platform

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

#: The ServiceAccount pipeline runs use (the chart's `roles.pipeline.serviceAccount`).
SERVICE_ACCOUNT = "crops-pipeline"
#: The Secret with the LLM endpoint and API key (the pipeline's `llm_secret`).
LLM_SECRET = "crops-llm"
LLM_KEYS = ("endpoint", "api-key")
#: (connect, read) seconds of every request.
REQUEST_TIMEOUT = (5, 15)
#: Where docs/kind.md creates these objects.
DOCS = 'docs/kind.md, "Where the pipeline\'s pods run"'
#: The chart's templates that hold what the pods need: the platform description, the PVCs, the
#: ServiceAccounts and the pipeline's Role and RoleBinding.
PLATFORM_TEMPLATES = ("platform.yaml", "pvc.yaml", "serviceaccounts.yaml", "rbac.yaml")
#: The key rules of the chart's crops-pipeline Role: (verb, group, resource, name).
ACCOUNT_RULES = (
    ("create", "ray.io", "rayjobs", ""),
    ("create", "serving.kserve.io", "inferenceservices", ""),
    ("get", "", "configmaps", CONFIGMAP),
)


class PreflightUnreachable(KubeError):
    """The Kubernetes API server did not answer; nothing could be checked."""


@dataclass(frozen=True)
class Problem:
    """One thing the run's pods would miss: the object, what is wrong, how to fix it."""

    kind: str
    name: str
    namespace: str
    what: str
    fix: str

    @property
    def where(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    """Every problem found, the checks that passed and those skipped (with why)."""

    namespace: str
    service_account: str
    problems: list[Problem] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """The problems, then each distinct fix once, then the skipped checks."""
        lines = [
            f"the pipeline's pods in namespace {self.namespace!r} (ServiceAccount "
            f"{self.service_account!r}) would miss {len(self.problems)} thing(s):"
        ]
        lines += [f"  - {p}" for p in self.problems]
        fixes = list(dict.fromkeys(p.fix for p in self.problems))
        if fixes:
            lines.append(f"to fix ({DOCS}):")
            lines += [f"  - {fix}" for fix in fixes]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def platform_fix(namespace: str) -> str:
    """The chart's objects the pods need, rendered into `namespace` (docs/kind.md)."""
    shown = " ".join(f"--show-only templates/{t}" for t in PLATFORM_TEMPLATES)
    return (
        f"helm template crops charts/crops -n {namespace} {shown} "
        f"| kubectl -n {namespace} apply -f -"
    )


def secret_fix(namespace: str, secret: str, keys: tuple[str, ...]) -> str:
    literals = {"endpoint": "endpoint=http://HOST:8000", "api-key": 'api-key="$KEY"'}
    args = " ".join(f"--from-literal={literals[k]}" for k in keys)
    return f"kubectl -n {namespace} create secret generic {secret} {args}"


def check(
    client: ApiClient,
    namespace: str,
    service_account: str = SERVICE_ACCOUNT,
    *,
    llm: bool = False,
    endpoint_given: bool = False,
    llm_secret: str = LLM_SECRET,
    pvcs: tuple[str, ...] = (),
    multi_user: bool = False,
    images: tuple[str, ...] = (),
) -> Report:
    """Check `namespace` for what a pipeline run's pods need; see the module docstring.

    Args:
        client: the caller's ApiClient (their kubeconfig).
        namespace: where the run's pods run (and the RayJobs, InferenceService, vLLM go).
        service_account: the account the run uses.
        llm: LLM synthesis through a server was asked for: the LLM Secret must be there.
        endpoint_given: the endpoint comes from `llm_endpoint` or `serve_vllm`, not the Secret
            (then only its `api-key` is required).
        llm_secret: the Secret's name.
        pvcs: the PVCs the compiled pipeline mounts (the platform's artifacts PVC is added).
        multi_user: KFP is multi-user: check the caller may create runs in `namespace`.
        images: the tasks' images; one that is not the platform's image (what the RayJobs and
            predictors run) is reported as a note.
    """
    return _Preflight(client, namespace, service_account).run(
        llm=llm,
        endpoint_given=endpoint_given,
        llm_secret=llm_secret,
        pvcs=pvcs,
        multi_user=multi_user,
        images=images,
    )


class _Preflight:
    def __init__(self, client: ApiClient, namespace: str, service_account: str) -> None:
        from kubernetes.client import AuthorizationV1Api, CoreV1Api

        self.core = CoreV1Api(client)
        self.authz = AuthorizationV1Api(client)
        self.ns = namespace
        self.sa = service_account
        self.report = Report(namespace, service_account)

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, call, *args, **kwargs) -> tuple[Any, int | None, str]:
        """(result, None, "") or (None, HTTP status, the server's reason)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs), None, ""
        except ApiException as exc:
            return None, exc.status, _reason(exc.body) or str(exc.reason)
        except (HTTPError, OSError) as exc:
            raise PreflightUnreachable(
                f"{what}: the Kubernetes API server is unreachable ({type(exc).__name__}: {exc})"
            ) from exc

    def _problem(self, kind: str, name: str, what: str, fix: str, namespace: str | None = None):
        ns = self.ns if namespace is None else namespace
        self.report.problems.append(Problem(kind, name, ns, what, fix))

    def _forbidden(self, kind: str, name: str, verb: str, resource: str, reason: str) -> None:
        self._problem(
            kind,
            name,
            f"you may not {verb} {resource} in namespace {self.ns!r}, so it cannot be checked"
            f" ({reason})",
            f"ask for `{verb}` on {resource} in {self.ns} (kubectl auth can-i {verb} "
            f"{resource} -n {self.ns}), or submit with --skip-preflight",
        )

    def _read(self, kind: str, name: str, resource: str, call, fix: str) -> Any:
        """The object, or None after recording why not (missing, forbidden, other)."""
        obj, status, reason = self._call(f"reading {kind} {self.ns}/{name}", call, name, self.ns)
        if status is None:
            self.report.passed.append(f"{kind} {self.ns}/{name} exists")
            return obj
        if status == 404:
            self._problem(kind, name, "not found", fix)
        elif status == 403:
            self._forbidden(kind, name, "get", resource, reason)
        else:
            self._problem(kind, name, f"cannot be read: HTTP {status}: {reason}", fix)
        return None

    # ------------------------------------------------------------------ the checks
    def run(
        self,
        *,
        llm: bool,
        endpoint_given: bool,
        llm_secret: str,
        pvcs: tuple[str, ...],
        multi_user: bool,
        images: tuple[str, ...] = (),
    ) -> Report:
        if not self._namespace():
            return self.report
        fix = platform_fix(self.ns)
        sa = self._read(
            "ServiceAccount",
            self.sa,
            "serviceaccounts",
            self.core.read_namespaced_service_account,
            fix
            if self.sa == SERVICE_ACCOUNT
            else f"kubectl -n {self.ns} create serviceaccount {self.sa}",
        )
        platform = self._platform(fix)
        wanted = dict.fromkeys(pvcs)
        if platform is not None:
            wanted[platform.artifacts_pvc] = None
            if platform.service_account("pipeline") != self.sa:
                self.report.notes.append(
                    f"the run uses ServiceAccount {self.sa!r}, the platform's pipeline role "
                    f"{platform.service_account('pipeline')!r}: the account needs the "
                    "crops-pipeline Role's rights (checked below when possible)"
                )
            for image in dict.fromkeys(images):
                if image != platform.image:
                    self.report.notes.append(
                        f"the tasks run image {image!r}, the RayJobs and predictors they create "
                        f"run {platform.image!r} (ConfigMap {self.ns}/{CONFIGMAP}, the chart's "
                        "`image`): build both from the same source, or give them one tag"
                    )
        if not wanted:
            wanted[Platform.default().artifacts_pvc] = None
        for pvc in wanted:
            self._read(
                "PersistentVolumeClaim",
                pvc,
                "persistentvolumeclaims",
                self.core.read_namespaced_persistent_volume_claim,
                fix,
            )
        if llm:
            self._secret(llm_secret, ("api-key",) if endpoint_given else LLM_KEYS)
        if multi_user:
            self._caller_may_create_runs()
        if sa is not None:
            self._account_rights()
        return self.report

    def _namespace(self) -> bool:
        """False when the namespace is missing (then nothing else is worth checking)."""
        _, status, reason = self._call(
            f"reading Namespace {self.ns}", self.core.read_namespace, self.ns
        )
        if status is None:
            self.report.passed.append(f"Namespace {self.ns} exists")
        elif status == 404:
            self._problem(
                "Namespace",
                self.ns,
                "not found: nothing else was checked (standalone KFP runs pods in its own "
                "namespace, kubeflow by default; multi-user KFP in your profile's)",
                f"give --namespace the namespace the pods run in, or kubectl create namespace "
                f"{self.ns} and install the platform there",
                namespace="",
            )
            return False
        elif status == 403:
            self.report.notes.append(
                f"you may not get namespaces, so namespace {self.ns!r} was not confirmed"
                " (a missing one shows below as missing or forbidden objects)"
            )
        else:
            self.report.notes.append(f"Namespace {self.ns}: HTTP {status}: {reason}")
        return True

    def _platform(self, fix: str) -> Platform | None:
        import json

        cm = self._read(
            "ConfigMap", CONFIGMAP, "configmaps", self.core.read_namespaced_config_map, fix
        )
        if cm is None:
            return None
        raw = (cm.data or {}).get(CONFIGMAP_KEY)
        try:
            return Platform.from_document(json.loads(raw or ""))
        except ValueError as exc:
            self.report.passed.pop()
            self._problem(
                "ConfigMap",
                CONFIGMAP,
                f"key {CONFIGMAP_KEY!r} is missing or not a platform description: "
                f"{str(exc).splitlines()[0]}",
                fix,
            )
            return None

    def _secret(self, name: str, keys: tuple[str, ...]) -> None:
        where = f"Secret {self.ns}/{name}"
        secret, status, reason = self._call(
            f"reading {where}", self.core.read_namespaced_secret, name, self.ns
        )
        if status == 404:
            self._problem(
                "Secret",
                name,
                "not found: LLM synthesis was asked for and the mine task takes the LLM's "
                f"{' and '.join(keys)} from it",
                secret_fix(self.ns, name, keys),
            )
            return
        if status == 403:
            self.report.notes.append(
                f"you may not get secrets in {self.ns!r}: {where} and its keys "
                f"({', '.join(keys)}) were not checked; a missing one stops the mine task"
            )
            return
        if status is not None:
            self.report.notes.append(f"{where} was not checked: HTTP {status}: {reason}")
            return
        data = secret.data or {}  # only the keys are looked at; values are never shown
        missing = [k for k in keys if k not in data]
        empty = [k for k in keys if k in data and not data[k]]
        for key in missing:
            why = "LLM synthesis was asked for"
            if key == "endpoint":
                why += "; neither llm_endpoint nor serve_vllm gives one"
            self._problem(
                "Secret",
                name,
                f"has no key {key!r} ({why})",
                f"kubectl -n {self.ns} delete secret {name}, then "
                + secret_fix(self.ns, name, keys),
            )
        for key in empty:
            self._problem(
                "Secret",
                name,
                f"key {key!r} is empty (LLM synthesis was asked for)",
                f"kubectl -n {self.ns} delete secret {name}, then "
                + secret_fix(self.ns, name, keys),
            )
        if not missing and not empty:
            self.report.passed.append(f"{where} has keys {', '.join(keys)}")

    def _caller_may_create_runs(self) -> None:
        from kubernetes import client

        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=self.ns,
                    verb="create",
                    group="pipelines.kubeflow.org",
                    version="v1beta1",
                    resource="runs",
                )
            )
        )
        got, status, reason = self._call(
            "SelfSubjectAccessReview", self.authz.create_self_subject_access_review, review
        )
        if status is not None:
            self.report.notes.append(
                f"whether you may create KFP runs in {self.ns!r} was not checked: HTTP "
                f"{status}: {reason}"
            )
        elif got.status.allowed:
            self.report.passed.append(f"you may create KFP runs in {self.ns}")
        else:
            self._problem(
                "Namespace",
                self.ns,
                "you may not create KFP runs here (create runs.pipelines.kubeflow.org, "
                "the check multi-user KFP makes)",
                f"ask the profile's owner to add you as a contributor of {self.ns}",
                namespace="",
            )

    def _account_rights(self) -> None:
        from kubernetes import client

        user = f"system:serviceaccount:{self.ns}:{self.sa}"
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{self.ns}"]
        groups.append("system:authenticated")
        for verb, group, resource, name in ACCOUNT_RULES:
            review = client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user,
                    groups=groups,
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=self.ns,
                        verb=verb,
                        group=group,
                        resource=resource,
                        name=name or None,
                    ),
                )
            )
            got, status, reason = self._call(
                "SubjectAccessReview", self.authz.create_subject_access_review, review
            )
            if status is not None:
                self.report.notes.append(
                    f"the rights of ServiceAccount {self.ns}/{self.sa} were not checked: you may "
                    f"not create SubjectAccessReviews (HTTP {status}: {reason}); `kubectl auth "
                    f"can-i create rayjobs.ray.io -n {self.ns} --as {user}` needs the same right"
                )
                return
            what = f"{resource}.{group}" if group else resource
            what += f" {name!r}" if name else ""
            if got.status.allowed:
                self.report.passed.append(f"ServiceAccount {self.sa} may {verb} {what}")
                continue
            if self.sa == SERVICE_ACCOUNT:  # the chart's RoleBinding binds it
                fix = platform_fix(self.ns)
            else:
                fix = (
                    f"kubectl -n {self.ns} create rolebinding crops-pipeline-{self.sa} "
                    f"--role=crops-pipeline --serviceaccount={self.ns}:{self.sa} (the Role is"
                    f" the chart's: {platform_fix(self.ns)})"
                )
            self._problem(
                "ServiceAccount",
                self.sa,
                f"may not {verb} {what} (the pipeline's tasks do; RBAC refuses)",
                fix,
            )


__all__ = [
    "ACCOUNT_RULES",
    "LLM_KEYS",
    "LLM_SECRET",
    "SERVICE_ACCOUNT",
    "PreflightUnreachable",
    "Problem",
    "Report",
    "check",
    "platform_fix",
]
