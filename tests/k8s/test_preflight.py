"""The preflight of `crops pipeline submit` (crops/k8s/preflight.py) against the real
kube-apiserver, with the caller a non-admin ServiceAccount token standing in for a user: a
namespace with the platform installed passes; each missing object is named with its kind,
name and namespace and how to create it; a caller without rights is told so; the CLI checks
after the KFP host answers and before the run exists. Also: LLM synthesis fails closed in the
mine component, and a registry-less image gets a warning."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import warnings
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from crops.k8s.preflight import PreflightUnreachable, check
from crops.pipeline import ImageWarning, compile_pipeline, image_warning, registry_host

SECRET = {"endpoint": "http://llm.example:8000", "api-key": "test-only-value"}
PLATFORM_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim")
#: What a user who may look at the namespace has (what KFP's `kubeflow-view` gives, roughly).
READER = [
    {"apiGroups": [""], "resources": ["serviceaccounts", "persistentvolumeclaims", "configmaps"],
     "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
]  # fmt: skip
SECRETS = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
KFP_RUNS = [{"apiGroups": ["pipelines.kubeflow.org"], "resources": ["runs"], "verbs": ["create"]}]


# ----------------------------------------------------------------------------- the cluster


@cache
def _chart() -> tuple[dict, ...]:
    from support.cluster import render

    return tuple(o for o in render({}) if o["kind"] in PLATFORM_KINDS)


def install(admin, ns: str, *, without: tuple[str, ...] = (), secret: dict | None = SECRET):
    """The chart's ServiceAccounts, Roles, RoleBindings, ConfigMap and PVCs in `ns` (less the
    `Kind/name`s in `without`), and the LLM Secret with `secret` as its data."""
    from kubernetes import client
    from support.cluster import relocate

    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    create = {
        "ServiceAccount": core.create_namespaced_service_account,
        "ConfigMap": core.create_namespaced_config_map,
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
    }
    for obj in _chart():
        if f"{obj['kind']}/{obj['metadata']['name']}" not in without:
            create[obj["kind"]](ns, relocate(copy.deepcopy(obj), ns))
    if secret is not None:
        core.create_namespaced_secret(ns, {"metadata": {"name": "crops-llm"}, "stringData": secret})


def caller(apiserver, ns: str, rules: list[dict], *, may_review: bool = False):
    """A non-admin caller: ServiceAccount `alice` with `rules` in `ns` (and, with may_review,
    the cluster-wide right to create SubjectAccessReviews). Returns (ApiClient, token)."""
    from kubernetes import client
    from support.cluster import admin_token as _token

    admin = apiserver.api_client()
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "alice"}})
    subject = [{"kind": "ServiceAccount", "name": "alice", "namespace": ns}]
    if rules:
        rbac.create_namespaced_role(ns, {"metadata": {"name": "alice"}, "rules": rules})
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": "alice"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "alice"},
                "subjects": subject,
            },
        )  # fmt: skip
    if may_review:
        name = f"{ns}-alice-reviews"
        rbac.create_cluster_role(
            {
                "metadata": {"name": name},
                "rules": [
                    {
                        "apiGroups": ["authorization.k8s.io"],
                        "resources": ["subjectaccessreviews"],
                        "verbs": ["create"],
                    }
                ],
            }
        )
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": name},
                "subjects": subject,
            }
        )  # fmt: skip
    token = _token(admin, "alice", ns)
    return apiserver.api_client(token=token), token


def problems(report) -> list[str]:
    return [str(p) for p in report.problems]


def assert_no_secret_values(text: str) -> None:
    for value in SECRET.values():
        assert value not in text


# ----------------------------------------------------------------------------- preflight


def test_a_namespace_with_everything_installed_passes(apiserver, namespace: str) -> None:
    install(apiserver.api_client(), namespace)
    alice, _ = caller(apiserver, namespace, READER + SECRETS + KFP_RUNS, may_review=True)
    report = check(alice, namespace, llm=True, pvcs=("crops-artifacts",), multi_user=True)
    assert report.ok, report.text()
    assert report.notes == []
    assert f"Secret {namespace}/crops-llm has keys endpoint, api-key" in report.passed
    assert f"PersistentVolumeClaim {namespace}/crops-artifacts exists" in report.passed
    assert "ServiceAccount crops-pipeline may create rayjobs.ray.io" in report.passed
    assert "ServiceAccount crops-pipeline may create inferenceservices.serving.kserve.io" in (
        report.passed
    )
    assert f"you may create KFP runs in {namespace}" in report.passed


def test_tasks_on_another_image_than_the_platforms_are_noted(apiserver, namespace: str) -> None:
    """The RayJobs and predictors run the chart's image; tasks compiled for another one are
    worth a word before the run (a note: a CUDA build for the tasks may be deliberate)."""
    install(apiserver.api_client(), namespace)
    alice, _ = caller(apiserver, namespace, READER + SECRETS, may_review=True)
    same = check(alice, namespace, images=("crops:0.1.0",))
    assert same.ok and same.notes == []
    other = check(alice, namespace, images=("registry.example/crops:0.2.0",))
    assert other.ok
    (note,) = other.notes
    assert "'registry.example/crops:0.2.0'" in note and "'crops:0.1.0'" in note
    assert f"ConfigMap {namespace}/crops-platform" in note


@pytest.mark.parametrize(
    ("without", "secret", "expected"),
    [
        (("ServiceAccount/crops-pipeline",), SECRET,
         "ServiceAccount {ns}/crops-pipeline: not found"),
        (("PersistentVolumeClaim/crops-artifacts",), SECRET,
         "PersistentVolumeClaim {ns}/crops-artifacts: not found"),
        (("ConfigMap/crops-platform",), SECRET, "ConfigMap {ns}/crops-platform: not found"),
        ((), None, "Secret {ns}/crops-llm: not found: LLM synthesis was asked for"),
        ((), {"api-key": "test-only-value"}, "Secret {ns}/crops-llm: has no key 'endpoint'"),
        ((), {"endpoint": SECRET["endpoint"]}, "Secret {ns}/crops-llm: has no key 'api-key'"),
        ((), {**SECRET, "endpoint": ""}, "Secret {ns}/crops-llm: key 'endpoint' is empty"),
    ],
    ids=["sa", "pvc", "configmap", "secret", "endpoint-key", "api-key", "empty-endpoint"],
)  # fmt: skip
def test_each_missing_object_is_named_with_its_kind_name_and_namespace(
    apiserver, namespace: str, without: tuple, secret: dict | None, expected: str
) -> None:
    install(apiserver.api_client(), namespace, without=without, secret=secret)
    alice, _ = caller(apiserver, namespace, READER + SECRETS, may_review=True)
    report = check(alice, namespace, llm=True, pvcs=("crops-artifacts",))
    (problem,) = report.problems
    assert str(problem).startswith(expected.format(ns=namespace)), report.text()
    text = report.text()
    assert "kubectl" in text or "helm template" in text  # how to create it
    assert_no_secret_values(text)


def test_every_problem_is_listed_at_once(apiserver, namespace: str) -> None:
    report = check(apiserver.api_client(), namespace, llm=True, pvcs=("crops-artifacts",))
    assert problems(report) == [
        f"ServiceAccount {namespace}/crops-pipeline: not found",
        f"ConfigMap {namespace}/crops-platform: not found",
        f"PersistentVolumeClaim {namespace}/crops-artifacts: not found",
        f"Secret {namespace}/crops-llm: not found: LLM synthesis was asked for and the mine "
        "task takes the LLM's endpoint and api-key from it",
    ]
    text = report.text()
    helm = (
        f"helm template crops charts/crops -n {namespace} --show-only templates/platform.yaml "
        "--show-only templates/pvc.yaml --show-only templates/serviceaccounts.yaml "
        f"--show-only templates/rbac.yaml | kubectl -n {namespace} apply -f -"
    )
    assert text.count(helm) == 1  # one fix for the chart's three objects
    assert f"kubectl -n {namespace} create secret generic crops-llm" in text
    assert "docs/kind.md" in text


def test_a_missing_namespace_is_named_alone(apiserver) -> None:
    report = check(apiserver.api_client(), "no-such-ns", llm=True)
    (problem,) = report.problems
    assert str(problem).startswith("Namespace no-such-ns: not found")
    assert "--namespace" in problem.fix


def test_no_llm_secret_is_needed_without_llm_synthesis_or_its_endpoint_with_one(
    apiserver, namespace: str
) -> None:
    admin = apiserver.api_client()
    install(admin, namespace, secret={"api-key": "test-only-value"})
    assert check(admin, namespace, llm=False).ok
    # The endpoint from llm_endpoint or serve_vllm: only the key the pod mounts is needed.
    assert check(admin, namespace, llm=True, endpoint_given=True).ok
    assert not check(admin, namespace, llm=True).ok


def test_a_caller_without_rights_is_told_what_it_may_not_read(apiserver, namespace: str) -> None:
    install(apiserver.api_client(), namespace)
    alice, _ = caller(apiserver, namespace, [])
    report = check(alice, namespace, llm=True)
    assert [p.where for p in report.problems] == [
        f"ServiceAccount {namespace}/crops-pipeline",
        f"ConfigMap {namespace}/crops-platform",
        f"PersistentVolumeClaim {namespace}/crops-artifacts",
    ]
    first = report.problems[0]
    assert f"you may not get serviceaccounts in namespace {namespace!r}" in first.what
    assert "kubectl auth can-i get serviceaccounts" in first.fix
    assert "--skip-preflight" in first.fix
    notes = " ".join(report.notes)
    assert "you may not get namespaces" in notes
    assert f"you may not get secrets in {namespace!r}" in notes and "were not checked" in notes


def test_without_get_secrets_the_key_check_is_skipped_not_failed(apiserver, namespace: str) -> None:
    install(apiserver.api_client(), namespace, secret=None)  # even a missing one
    alice, _ = caller(apiserver, namespace, READER)
    report = check(alice, namespace, llm=True)
    assert report.ok, report.text()
    notes = "\n".join(report.notes)
    assert f"Secret {namespace}/crops-llm and its keys (endpoint, api-key) were not checked" in (
        notes
    )
    # No right to create SubjectAccessReviews: the account's rights are skipped, with a note.
    assert f"the rights of ServiceAccount {namespace}/crops-pipeline were not checked" in notes


def test_the_accounts_missing_rights_are_named(apiserver, namespace: str) -> None:
    install(apiserver.api_client(), namespace, without=("RoleBinding/crops-pipeline",))
    alice, _ = caller(apiserver, namespace, READER + SECRETS, may_review=True)
    report = check(alice, namespace)
    assert problems(report) == [
        f"ServiceAccount {namespace}/crops-pipeline: may not create rayjobs.ray.io (the "
        "pipeline's tasks do; RBAC refuses)",
        f"ServiceAccount {namespace}/crops-pipeline: may not create "
        "inferenceservices.serving.kserve.io (the pipeline's tasks do; RBAC refuses)",
        f"ServiceAccount {namespace}/crops-pipeline: may not get configmaps 'crops-platform' "
        "(the pipeline's tasks do; RBAC refuses)",
    ]
    # Another account: bind the chart's Role to it.
    other = check(alice, namespace, "alice")
    assert f"--role=crops-pipeline --serviceaccount={namespace}:alice" in other.problems[0].fix
    assert any("the platform's pipeline role 'crops-pipeline'" in n for n in other.notes)


def test_multi_user_kfp_needs_the_right_to_create_runs(apiserver, namespace: str) -> None:
    install(apiserver.api_client(), namespace)
    alice, _ = caller(apiserver, namespace, READER + SECRETS)
    (problem,) = check(alice, namespace, multi_user=True).problems
    assert str(problem) == (
        f"Namespace {namespace}: you may not create KFP runs here (create "
        "runs.pipelines.kubeflow.org, the check multi-user KFP makes)"
    )
    assert check(alice, namespace).ok  # standalone KFP does not ask


def test_an_unreachable_api_server_fails_fast() -> None:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(PreflightUnreachable, match="Kubernetes API server is unreachable"):
        check(client.ApiClient(cfg), "crops")
    assert time.monotonic() - t0 < 10


# ----------------------------------------------------------------------------- the CLI


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeKfp:
    """A KFP API that answers healthz only, and records every request."""

    def __init__(self, multi_user: bool = False) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(f"GET {self.path}")
                body = json.dumps({"multi_user": multi_user}).encode()
                self.send_response(200 if self.path.endswith("/healthz") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kfp_host():
    hosts: list[FakeKfp] = []

    def make(multi_user: bool = False) -> FakeKfp:
        hosts.append(FakeKfp(multi_user))
        return hosts[-1]

    yield make
    for host in hosts:
        host.close()


@pytest.fixture
def runs(monkeypatch) -> list[dict]:
    """kfp.Client replaced: every run it is asked to create, recorded."""
    import kfp

    created: list[dict] = []

    class Client:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

        def create_run_from_pipeline_package(self, path, **kwargs):
            needs = yaml.safe_load_all(Path(path).read_text())
            created.append({"client": self.kwargs, "spec": next(needs), **kwargs})
            return type("Run", (), {"run_id": "run-1"})()

    monkeypatch.setattr(kfp, "Client", Client)
    return created


def kubeconfig(apiserver, token: str, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "t",
                        "cluster": {
                            "server": apiserver.url,
                            "certificate-authority": str(apiserver.ca_file),
                        },
                    }
                ],
                "users": [{"name": "alice", "user": {"token": token}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "alice"}}],
                "current-context": "t",
            }
        )
    )
    return path


def test_submit_names_everything_missing_and_creates_no_run(
    run, apiserver, namespace: str, kfp_host, runs, tmp_path: Path
) -> None:
    _, token = caller(apiserver, namespace, READER + SECRETS)
    host = kfp_host()
    code, _, stderr = run(
        "pipeline", "submit", "--host", host.url, "--namespace", namespace,
        "--kubeconfig", kubeconfig(apiserver, token, tmp_path / "kc"),
    )  # fmt: skip
    assert code == 2, stderr
    for missing in (
        f"ServiceAccount {namespace}/crops-pipeline: not found",
        f"ConfigMap {namespace}/crops-platform: not found",
        f"PersistentVolumeClaim {namespace}/crops-artifacts: not found",
        f"Secret {namespace}/crops-llm: not found",
    ):
        assert missing in stderr
    assert f"kubectl -n {namespace} create secret generic crops-llm" in stderr
    assert runs == [] and host.requests == ["GET /apis/v2beta1/healthz"]


@pytest.mark.parametrize("multi_user", [False, True], ids=["standalone", "multi-user"])
def test_submit_carries_the_namespace_end_to_end_after_a_passing_preflight(
    run, apiserver, namespace: str, kfp_host, runs, tmp_path: Path, multi_user: bool
) -> None:
    install(apiserver.api_client(), namespace)
    rules = READER + SECRETS + (KFP_RUNS if multi_user else [])
    _, token = caller(apiserver, namespace, rules, may_review=True)
    code, stdout, stderr = run(
        "pipeline", "submit", "--host", kfp_host(multi_user).url, "--namespace", namespace,
        "--kubeconfig", kubeconfig(apiserver, token, tmp_path / "kc"), "--param", "max_steps=10",
    )  # fmt: skip
    assert code == 0, stderr
    (created,) = runs
    assert created["arguments"] == {"max_steps": 10, "namespace": namespace}
    assert created["service_account"] == "crops-pipeline"
    # Standalone KFP refuses a namespace ("single-user mode"); multi-user files the run there.
    assert created["namespace"] == (namespace if multi_user else None)
    assert f"preflight: namespace {namespace} has what the run needs" in stderr
    assert "warning: image 'crops:0.1.0' names no registry host" in stderr
    assert f"pods in namespace {namespace} as crops-pipeline" in stdout


def test_submit_refuses_a_namespace_parameter_that_differs_from_the_pods(run) -> None:
    code, _, stderr = run(
        "pipeline", "submit", "--host", "http://127.0.0.1:9", "--param", "namespace=crops"
    )
    assert code == 2
    assert "--param namespace=crops differs from the namespace of the pipeline's pods" in stderr
    assert "(kubeflow, the default)" in stderr and "give --namespace crops" in stderr


def test_the_preflight_runs_after_the_host_answers_and_fails_fast(
    run, kfp_host, runs, tmp_path: Path
) -> None:
    """The KFP host first (exit 1, the kubeconfig never read), then the preflight: a bad
    kubeconfig is bad input (2), an unreachable API server exit 1, all within seconds."""
    t0 = time.monotonic()
    down = f"http://127.0.0.1:{_closed_port()}"
    missing = tmp_path / "no-such-kubeconfig"
    code, _, stderr = run("pipeline", "submit", "--host", down, "--kubeconfig", missing)
    assert code == 1 and f"the KFP host {down} is unreachable" in stderr
    host = kfp_host()
    code, _, stderr = run("pipeline", "submit", "--host", host.url, "--kubeconfig", missing)
    assert code == 2 and "preflight: no usable Kubernetes configuration" in stderr
    assert "--skip-preflight" in stderr
    kc = tmp_path / "kc"
    kc.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "t", "cluster": {"server": f"https://127.0.0.1:{_closed_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
                "current-context": "t",
            }
        )
    )
    code, _, stderr = run("pipeline", "submit", "--host", host.url, "--kubeconfig", kc)
    assert code == 1 and "the Kubernetes API server is unreachable" in stderr
    assert runs == [] and time.monotonic() - t0 < 20
    # --skip-preflight: straight to the run.
    code, _, stderr = run(
        "pipeline", "submit", "--host", host.url, "--kubeconfig", missing, "--skip-preflight"
    )
    assert code == 0, stderr
    assert runs[0]["arguments"] == {"namespace": "kubeflow"}


def test_submit_without_synthesis_or_with_a_package_checks_what_it_mounts(
    run, apiserver, namespace: str, kfp_host, runs, tmp_path: Path
) -> None:
    install(apiserver.api_client(), namespace, secret=None)
    _, token = caller(apiserver, namespace, READER + SECRETS, may_review=True)
    kc = kubeconfig(apiserver, token, tmp_path / "kc")
    host = kfp_host().url
    common = ("pipeline", "submit", "--host", host, "--namespace", namespace, "--kubeconfig", kc)
    code, _, stderr = run(*common, "--synthesis", "none")
    assert code == 0, stderr
    with_llm = tmp_path / "llm.yaml"
    assert run("pipeline", "compile", "--out", with_llm)[0] == 0
    code, _, stderr = run(*common, "--package", with_llm)
    assert code == 2 and f"Secret {namespace}/crops-llm: not found" in stderr
    # The endpoint from llm_endpoint: the Secret is still needed, for the api-key the pod mounts.
    code, _, stderr = run(*common, "--package", with_llm, "--param", "llm_endpoint=http://x")
    assert code == 2 and "the mine task takes the LLM's api-key from it" in stderr


# ----------------------------------------------------------------------------- fail closed


def test_mine_fails_when_an_llm_was_asked_for_and_no_endpoint_is_set(
    tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from kfp.dsl import Dataset, Metrics

    from crops.components.mine import mine

    monkeypatch.delenv("CROPS_LLM_ENDPOINT", raising=False)
    with pytest.raises(ValueError, match="LLM synthesis was asked for") as exc:
        mine.python_func(
            world=Dataset(uri=str(tiny_dir)),
            mined=Dataset(uri=str(tmp_path / "mined")),
            metrics=Metrics(uri=str(tmp_path / "m")),
            llm_backend="endpoint",
            filter_model="none",
        )
    message = str(exc.value)
    for named in ("llm_endpoint", "serve_vllm", "CROPS_LLM_ENDPOINT", "crops-llm", "none"):
        assert named in message
    assert not (tmp_path / "mined" / "samples.parquet").exists()


# ----------------------------------------------------------------------------- the image


def test_registry_hosts_follow_dockers_rule() -> None:
    assert registry_host("crops:0.1.0") is None
    assert registry_host("team/crops:0.1.0") is None
    assert registry_host("registry.example:5000/crops:0.1.0") == "registry.example:5000"
    assert registry_host("localhost/crops:0.1.0") == "localhost"
    assert image_warning("registry.example/crops:1") is None
    assert "the cluster resolves it against" in image_warning("crops:0.1.0")


def test_compile_warns_on_an_image_without_a_registry(run, tmp_path: Path) -> None:
    code, _, stderr = run("pipeline", "compile", "--out", tmp_path / "p.yaml")
    assert code == 0
    assert "warning: image 'crops:0.1.0' names no registry host" in stderr
    code, _, stderr = run(
        "pipeline", "compile", "--out", tmp_path / "q.yaml",
        "--image", "registry.example:5000/crops:0.1.0",
    )  # fmt: skip
    assert code == 0 and "warning" not in stderr
    code, _, stderr = run("pipeline", "compile", "--out", tmp_path / "l.yaml", "--target", "local")
    assert code == 0 and "warning" not in stderr  # kfp.local pulls nothing
    with pytest.warns(ImageWarning, match="'crops:0.1.0' names no registry host"):
        compile_pipeline(tmp_path / "r.yaml", "cluster")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)
        compile_pipeline(tmp_path / "s.yaml", "cluster", image="registry.example/crops:0.1.0")
