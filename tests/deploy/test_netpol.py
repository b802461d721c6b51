"""The NetworkPolicies the chart renders, against every pod template the platform creates.

First the evaluator itself (tests/support/netpol.py) on small hand-written policies, one rule shape
at a time, admitted and denied. Then the platform: the chart is rendered (default,
Serverless, gpu values) and its NetworkPolicies are evaluated for every pod template any
code path creates (the chart's RayJobs, InferenceService predictors, vLLM and logsink
Deployments and A/B CronJob; the run-time builders in crops.k8s; every task pod of the
compiled cluster pipeline, in the KFP namespace and in the release namespace), from each to
each, on the ports in use and a few others. What each pod is for comes from where it was
found, not from its labels, so a template that lost its labels is caught: the pairs that must
talk (ADMITTED) must be admitted, everything else denied. Every wrong pair is reported at once.

Only ingress policies are rendered; the evaluator checks egress as well (none isolates).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
import yaml
from support.cluster import rendering as rendered
from support.netpol import (
    ContainerPort,
    NetworkPolicies,
    Pod,
    container_ports,
    selector_matches,
)

RELEASE = "crops"  # the renderings' namespace: every policy and platform pod lives here
KFP_NAMESPACE = "kubeflow"  # standalone KFP runs the pipeline's task pods here
OPERATOR_NAMESPACE = "ray-system"  # the KubeRay operator (values: ray.operatorNamespace)
SERVING_NAMESPACES = ("knative-serving", "istio-system", "kourier-system")
# The chart value sets (tests/support/cluster.py CHART_VALUES) whose policies are checked.
VALUE_SETS = ("default", "serverless", "gpu")
PART_OF, COMPONENT = "app.kubernetes.io/part-of", "app.kubernetes.io/component"
# Ports tried on every destination besides its declared ones: Ray's GCS, dashboard (job API)
# and client, the predictor (and the logsink), Knative's queue-proxy, vLLM, KServe's agent,
# and an arbitrary Ray worker port.
PROBE_PORTS = (6379, 8265, 10001, 8080, 8012, 8000, 9081, 23456)


# ------------------------------------------------------------------------------ the evaluator


def pod(name: str, ns: str = "app", ports: Iterable[ContainerPort] = (), **labels: str) -> Pod:
    return Pod(name, ns, labels, tuple(ports))


def policy(spec: dict, name: str = "p", namespace: str = "app") -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def allow(spec: dict, **namespaces: dict[str, str]) -> Callable[..., bool]:
    """`admitted(src, dst, port, protocol)` under one policy selecting `role=db` pods."""
    net = NetworkPolicies(
        [policy({"podSelector": {"matchLabels": {"role": "db"}}, **spec})], namespaces
    )
    return lambda src, dst=None, port=5432, proto="TCP": (
        net.allowed(src, dst or pod("db", role="db"), port, proto).allowed
    )


WEB, OTHER_WEB, DB = pod("web", role="web"), pod("web", "other", role="web"), pod("db", role="db")


def test_no_policy_no_isolation() -> None:
    net = NetworkPolicies([])
    assert net.allowed(WEB, DB, 5432)
    # A policy elsewhere, or one that selects other pods, does not isolate.
    net = NetworkPolicies(
        [
            policy({"podSelector": {}}, namespace="other"),
            policy({"podSelector": {"matchLabels": {"role": "x"}}}),
        ]
    )
    assert net.allowed(WEB, DB, 5432)


def test_default_deny_and_policy_types() -> None:
    deny = NetworkPolicies([policy({"podSelector": {}, "policyTypes": ["Ingress"]})])
    verdict = deny.allowed(WEB, DB, 5432)
    assert not verdict and "isolated by [p]" in verdict.reason
    # Without policyTypes, Ingress is implied even without ingress rules (deny all) ...
    assert not NetworkPolicies([policy({"podSelector": {}})]).allowed(WEB, DB, 5432)
    # ... and a policy of Egress only does not isolate ingress.
    egress_only = NetworkPolicies([policy({"podSelector": {}, "policyTypes": ["Egress"]})])
    assert egress_only.ingress_allowed(WEB, DB, 5432)
    assert not egress_only.egress_allowed(WEB, DB, 5432)
    # policyTypes absent with egress rules: both directions.
    both = NetworkPolicies([policy({"podSelector": {}, "egress": [{}]})])
    assert both.egress_allowed(WEB, DB, 1) and not both.ingress_allowed(WEB, DB, 1)


def test_rules_of_all_selecting_policies_add_up() -> None:
    policies = [
        policy({"podSelector": {}, "policyTypes": ["Ingress"]}, name="deny"),
        policy(
            {
                "podSelector": {"matchLabels": {"role": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}]}],
            },
            name="db",
        ),
    ]
    net = NetworkPolicies(policies)
    verdict = net.allowed(WEB, DB, 5432)
    assert verdict and "db rule 0" in verdict.reason
    assert not net.allowed(DB, WEB, 80)  # web is isolated by the default deny alone


def test_empty_from_rule_and_empty_rule_admit_everyone() -> None:
    for rule in ({}, {"from": []}):
        admitted = allow({"ingress": [rule]})
        assert admitted(OTHER_WEB) and admitted(pod("x", "y"), port=1)
    assert not allow({"ingress": []})(WEB)


def test_pod_selector_peer_is_the_policys_namespace_only() -> None:
    admitted = allow({"ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}]}]})
    assert admitted(WEB)
    assert not admitted(OTHER_WEB)  # same labels, another namespace
    assert not admitted(pod("api", role="api"))
    assert allow({"ingress": [{"from": [{"podSelector": {}}]}]})(pod("any"))
    assert not allow({"ingress": [{"from": [{"podSelector": {}}]}]})(pod("any", "other"))


def test_namespace_selector_peer_matches_namespace_labels() -> None:
    by_label = {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}
    admitted = allow(by_label, other={"team": "a"})
    assert admitted(OTHER_WEB) and admitted(pod("anything", "other"))
    assert not admitted(WEB)  # the policy's own namespace lacks the label
    assert not allow(by_label, other={"team": "b"})(OTHER_WEB)
    # kubernetes.io/metadata.name is always there.
    by_name = {
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/metadata.name",
                                    "operator": "In",
                                    "values": ["other", "third"],
                                }
                            ]
                        }
                    }
                ]
            }
        ]
    }
    assert allow(by_name)(OTHER_WEB) and not allow(by_name)(WEB)
    assert not allow(by_name)(pod("x", "fourth"))
    everywhere = {"ingress": [{"from": [{"namespaceSelector": {}}]}]}
    assert allow(everywhere)(OTHER_WEB) and allow(everywhere)(WEB)


def test_both_selectors_in_one_peer_must_hold_together() -> None:
    peer = {
        "namespaceSelector": {"matchLabels": {"team": "a"}},
        "podSelector": {"matchLabels": {"role": "web"}},
    }
    admitted = allow({"ingress": [{"from": [peer]}]}, other={"team": "a"})
    assert admitted(OTHER_WEB)
    assert not admitted(pod("api", "other", role="api"))  # namespace right, pod wrong
    assert not admitted(WEB)  # pod right, namespace wrong
    # Two peers instead of one: either suffices.
    either = [
        {"namespaceSelector": peer["namespaceSelector"]},
        {"podSelector": peer["podSelector"]},
    ]
    admitted = allow({"ingress": [{"from": either}]}, other={"team": "a"})
    assert admitted(pod("api", "other", role="api")) and admitted(WEB)
    any_namespace = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "web"}}}
    admitted = allow({"ingress": [{"from": [any_namespace]}]})
    assert admitted(OTHER_WEB) and admitted(WEB) and not admitted(pod("api", "x", role="api"))


def test_ip_block_peers_never_match_pods() -> None:
    admitted = allow({"ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]})
    assert not admitted(WEB)


def test_ports() -> None:
    numeric = allow({"ingress": [{"ports": [{"port": 5432}]}]})
    assert numeric(WEB, port=5432) and not numeric(WEB, port=5433)
    assert not numeric(WEB, port=5432, proto="UDP")  # protocol defaults to TCP
    udp = allow({"ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})
    assert udp(WEB, port=53, proto="UDP") and not udp(WEB, port=53)
    every_tcp = allow({"ingress": [{"ports": [{"protocol": "TCP"}]}]})
    assert every_tcp(WEB, port=1) and every_tcp(WEB, port=65535)
    assert not every_tcp(WEB, port=1, proto="SCTP")
    ranged = allow({"ingress": [{"ports": [{"port": 8000, "endPort": 8010}]}]})
    assert ranged(WEB, port=8000) and ranged(WEB, port=8010) and ranged(WEB, port=8005)
    assert not ranged(WEB, port=7999) and not ranged(WEB, port=8011)
    several = allow({"ingress": [{"ports": [{"port": 1}, {"port": 2}]}]})
    assert several(WEB, port=2) and not several(WEB, port=3)


def test_named_ports_resolve_against_the_destination() -> None:
    admitted = allow({"ingress": [{"ports": [{"port": "pg"}]}]})
    db = pod("db", ports=[ContainerPort(5432, "pg")], role="db")
    assert admitted(WEB, db, 5432)
    assert not admitted(WEB, db, 5433)  # the name stands for 5432 only
    assert not admitted(WEB, db, 5432, "UDP")
    assert not admitted(WEB, pod("db", ports=[ContainerPort(5432, "sql")], role="db"), 5432)
    assert not admitted(WEB, pod("db", ports=[ContainerPort(5432, "pg", "UDP")], role="db"), 5432)
    assert not admitted(WEB, DB, 5432)  # no ports declared


def test_the_peer_and_the_port_of_one_rule_must_both_match() -> None:
    rules = [
        {"from": [{"podSelector": {"matchLabels": {"role": "web"}}}], "ports": [{"port": 1}]},
        {"from": [{"podSelector": {"matchLabels": {"role": "api"}}}], "ports": [{"port": 2}]},
    ]
    admitted = allow({"ingress": rules})
    assert admitted(WEB, port=1) and admitted(pod("api", role="api"), port=2)
    assert not admitted(WEB, port=2) and not admitted(pod("api", role="api"), port=1)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchLabels": {"a": "1"}}, {}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]},
            {"a": "3"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        (
            {
                "matchLabels": {"a": "1"},
                "matchExpressions": [{"key": "b", "operator": "In", "values": ["x"]}],
            },
            {"a": "1", "b": "y"},
            False,
        ),
    ],
)
def test_label_selectors(selector: dict, labels: dict, matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_egress_is_evaluated_as_well() -> None:
    policies = [
        policy(
            {
                "podSelector": {"matchLabels": {"role": "web"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"podSelector": {"matchLabels": {"role": "db"}}}],
                        "ports": [{"port": 5432}],
                    }
                ],
            }
        )
    ]
    net = NetworkPolicies(policies)
    assert net.allowed(WEB, DB, 5432)
    assert not net.allowed(WEB, DB, 80)
    assert not net.allowed(WEB, pod("api", role="api"), 5432)
    assert net.allowed(pod("api", role="api"), WEB, 80)  # api is not isolated either way


@pytest.mark.parametrize(
    "bad",
    [
        policy({"ingress": []}),  # no podSelector
        {"kind": "Service", "metadata": {"name": "s"}, "spec": {}},
        policy({"podSelector": {}, "policyTypes": ["Sideways"]}),
        policy({"podSelector": {}, "ingress": [{"from": [{}]}]}),
        policy(
            {
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}],
            }
        ),
        policy({"podSelector": {}, "ingress": [{"ports": [{"port": "pg", "endPort": 9}]}]}),
        policy({"podSelector": {}, "ingress": [{"ports": [{"port": 9, "endPort": 8}]}]}),
        policy({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
    ],
)
def test_malformed_policies_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        NetworkPolicies([bad])


@pytest.mark.parametrize(
    "expr",
    [
        {"key": "a", "operator": "Like", "values": ["1"]},
        {"key": "a", "operator": "In", "values": []},
        {"key": "a", "operator": "Exists", "values": ["1"]},
    ],
)
def test_malformed_selectors_are_refused(expr: dict) -> None:
    net = NetworkPolicies([policy({"podSelector": {"matchExpressions": [expr]}})])
    with pytest.raises(ValueError):
        net.allowed(WEB, DB, 1)


def test_pods_from_templates() -> None:
    template = {
        "metadata": {"labels": {"role": "db"}},
        "spec": {
            "initContainers": [{"name": "i", "ports": [{"containerPort": 1}]}],
            "containers": [
                {"name": "c", "ports": [{"containerPort": 5432, "name": "pg", "protocol": "TCP"}]},
                {"name": "d"},
            ],
        },
    }
    p = Pod.from_template("db", "app", template)
    assert p.labels == {"role": "db"} and str(p) == "app/db"
    assert p.ports == (ContainerPort(1), ContainerPort(5432, "pg"))
    assert Pod.from_template("x", "app", {"spec": {}}).labels == {}


# ------------------------------------------------------------------------------ the platform


@dataclass(frozen=True)
class Endpoint:
    """A pod the platform (or the cluster around it) runs. `role` is what the pod is for,
    known from where its template was found; `origin` is the code path that made it."""

    origin: str  # chart, runtime, pipeline, cluster
    role: str
    pod: Pod

    def __str__(self) -> str:
        return f"{self.origin} {self.pod.name} [{self.role}] in {self.pod.namespace}"


# The pairs that must talk: (source role, source namespaces or None for any, destination role,
# destination ports or None for all). Destinations live in the release namespace.
ADMITTED: list[tuple[str, tuple[str, ...] | None, str, tuple[int, ...] | None]] = [
    ("ray-node", (RELEASE,), "ray-node", None),  # head and workers among themselves
    ("ray-submitter", (RELEASE,), "ray-node", (8265,)),  # `ray job submit`
    ("pipeline", None, "ray-node", (8265,)),  # train/index tasks on the job API
    ("operator", (OPERATOR_NAMESPACE,), "ray-node", (8265,)),  # KubeRay polls the job
    ("abtest", None, "predictor", (8080,)),  # the A/B CronJob: control and treatment
    ("pipeline", None, "predictor", (8080,)),  # the pipeline's abtest (and deploy) task
    ("pipeline", None, "llm", (8000,)),  # mine's LLM synthesis
    ("ray-node", None, "llm", (8000,)),  # `crops mine` run as a RayJob
    ("predictor", (RELEASE,), "logsink", (8080,)),  # KServe's agent sends the payload logs
]
# Payload logging on (the default: to the logsink): KServe's agent (9081) fronts the predictor
# container, and Standard mode's predictor Service targets it.
ADMITTED_LOGGED = [
    ("abtest", None, "predictor", (9081,)),
    ("pipeline", None, "predictor", (9081,)),
]
# Serverless: Knative's activator and the ingress gateways reach the queue-proxy.
ADMITTED_SERVERLESS = [("serving", SERVING_NAMESPACES, "predictor", (8012,))]
# Either way is fine (the policies may or may not open these): Serverless, the platform's
# callers on the queue-proxy port and the gateways on the container ports behind it (the
# predictor's, KServe's agent's).
UNASSERTED_SERVERLESS = [
    ("abtest", None, "predictor", (8012,)),
    ("pipeline", None, "predictor", (8012,)),
    ("serving", SERVING_NAMESPACES, "predictor", (8080, 9081)),
]


def _listed(table: list, src: Endpoint, dst: Endpoint, port: int) -> bool:
    return any(
        src.role == s_role
        and (s_ns is None or src.pod.namespace in s_ns)
        and dst.role == d_role
        and (ports is None or port in ports)
        for s_role, s_ns, d_role, ports in table
    )


def expected(
    src: Endpoint, dst: Endpoint, port: int, serverless: bool, logged: bool = True
) -> bool | None:
    """Admitted (True), denied (False) or either (None)."""
    if _listed(ADMITTED, src, dst, port):
        return True
    if logged and _listed(ADMITTED_LOGGED, src, dst, port):
        return True
    if serverless and _listed(ADMITTED_SERVERLESS, src, dst, port):
        return True
    if serverless and _listed(UNASSERTED_SERVERLESS, src, dst, port):
        return None
    return False


def wrong_pairs(
    policies: list[dict],
    sources: Iterable[Endpoint],
    destinations: Iterable[Endpoint],
    serverless: bool,
    involving: str | None = None,
    logged: bool = True,
) -> list[str]:
    """Every (source, destination, port) whose outcome differs from `expected`; only pairs
    with an endpoint of origin `involving` when given; `logged`: the predictors send payload
    logs. Destinations outside the release namespace are not governed by the chart and are
    skipped."""
    net = NetworkPolicies(policies)
    out = []
    destinations = [d for d in destinations if d.pod.namespace == RELEASE]
    for src in sources:
        for dst in destinations:
            if involving and involving not in (src.origin, dst.origin):
                continue
            ports = sorted({*PROBE_PORTS, *(p.port for p in dst.pod.ports)})
            for port in ports:
                want = expected(src, dst, port, serverless, logged)
                if want is None:
                    continue
                got = net.allowed(src.pod, dst.pod, port)
                if got.allowed != want:
                    out.append(
                        f"{src} -> {dst} port {port}/TCP: expected "
                        f"{'admitted' if want else 'denied'}, got "
                        f"{'admitted' if got else 'denied'} ({got.reason})"
                    )
    return out


def report(wrong: list[str]) -> str:
    return f"{len(wrong)} wrong pair(s):\n" + "\n".join(wrong)


# ---------------------------------------------------------------- collecting the pod templates


def network_policies(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] == "NetworkPolicy"]


def _template_pod(name: str, namespace: str, template: dict) -> Pod:
    return Pod.from_template(name, namespace, template or {})


def rayjob_pods(obj: dict, origin: str) -> list[Endpoint]:
    """Head, workers and the submitter of a RayJob. In K8sJobMode (the default) KubeRay runs
    `ray job submit` in a Job from submitterPodTemplate, or from its default template, which
    has no labels; in HTTPMode the operator submits (its own endpoint), in SidecarMode a
    container in the head does."""
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace", RELEASE)
    spec = obj["spec"]
    cluster = spec["rayClusterSpec"]
    out = [
        Endpoint(
            origin,
            "ray-node",
            _template_pod(f"{name} head", ns, cluster["headGroupSpec"]["template"]),
        )
    ]
    for group in cluster.get("workerGroupSpecs") or []:
        pod_ = _template_pod(f"{name} workers {group['groupName']}", ns, group["template"])
        out.append(Endpoint(origin, "ray-node", pod_))
    if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
        template = spec.get("submitterPodTemplate") or {
            "spec": {"containers": [{"name": "ray-job-submitter"}]}
        }
        label = "submitter" if "submitterPodTemplate" in spec else "submitter (KubeRay's default)"
        out.append(
            Endpoint(origin, "ray-submitter", _template_pod(f"{name} {label}", ns, template))
        )
    return out


def isvc_pods(obj: dict, origin: str) -> list[Endpoint]:
    """The predictor and each Standard-mode canary predictor. KServe labels the pods with the
    InferenceService's labels, then the component's `labels` field, then its own."""
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace", RELEASE)
    components = [("predictor", obj["spec"]["predictor"])]
    components += [
        (f"canary {c['predictor'].get('name')}", c["predictor"])
        for c in obj["spec"].get("canary") or []
    ]
    out = []
    for where, component in components:
        labels = {
            **(obj["metadata"].get("labels") or {}),
            **(component.get("labels") or {}),
            "serving.kserve.io/inferenceservice": name,
            "component": "predictor",
        }
        pod_ = Pod(f"{name} {where}", ns, labels, container_ports(component))
        out.append(Endpoint(origin, "predictor", pod_))
    return out


# What the chart's Deployments and CronJobs are for, by name; any other pod-running object
# fails the collection until it is added here (and to ADMITTED if it talks to anything).
CHART_ROLES = {
    ("Deployment", "crops-vllm"): "llm",
    ("Deployment", "crops-logsink"): "logsink",
    ("CronJob", "crops-abtest"): "abtest",
}
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


def pod_template(obj: dict) -> dict:
    spec = obj["spec"]
    if obj["kind"] == "Pod":
        return {"metadata": obj["metadata"], "spec": spec}
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]
    return spec["template"]


def chart_pods(objs: list[dict]) -> list[Endpoint]:
    out = []
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        ns = obj["metadata"].get("namespace", RELEASE)
        if kind == "RayJob":
            out += rayjob_pods(obj, "chart")
        elif kind == "InferenceService":
            out += isvc_pods(obj, "chart")
        elif kind in POD_KINDS:
            role = CHART_ROLES.get((kind, name))
            assert role, f"{kind} {name} runs pods of an unknown role: add it to CHART_ROLES"
            template = pod_template(obj)
            out.append(
                Endpoint("chart", role, _template_pod(f"{kind.lower()} {name}", ns, template))
            )
    return out


def platform_of(objs: list[dict]):
    """The platform description the builders read on a cluster: the rendered ConfigMap
    crops-platform (Platform.from_cluster), else the packaged default."""
    from crops.k8s.platform import CONFIGMAP, CONFIGMAP_KEY, Platform

    for obj in objs:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == CONFIGMAP:
            return Platform.from_document(json.loads(obj["data"][CONFIGMAP_KEY]))
    return Platform.default(RELEASE)


def runtime_pods(values_name: str, objs: list[dict]) -> list[Endpoint]:
    """The pods the run-time builders create, as the pipeline's components call them, in the
    release namespace, from the platform description this rendering installs."""
    from crops.k8s import inference_service as isvc
    from crops.k8s import rayjob, vllm

    platform = platform_of(objs)
    gpu = values_name == "gpu"
    mode = "Serverless" if values_name == "serverless" else "Standard"
    job = rayjob.RayJobSpec(
        name="crops-train-abc-0",
        namespace=RELEASE,
        job="train",
        entrypoint=rayjob.entrypoint("train", ["--out", "/artifacts/model"]),
        workers=2,
        worker_gpus=int(gpu),
    )
    spec = isvc.InferenceServiceSpec(
        name="crops-retrieval",
        namespace=RELEASE,
        model_path="/artifacts/serving/m/model",
        index_path="/artifacts/serving/m/index",
        mode=mode,
    )
    service = isvc.manifest(spec, platform)
    if mode == "Standard":  # what InferenceServiceClient.deploy patches in
        canary = isvc.canary_predictor(spec, platform)
        service["spec"]["canary"] = [{"predictor": canary, "trafficPercent": 10}]
    llm = vllm.deployment(
        vllm.VllmSpec(namespace=RELEASE, model="Qwen/Qwen2.5-14B-Instruct"), platform
    )
    return [
        *rayjob_pods(rayjob.manifest(job, platform), "runtime"),
        *isvc_pods(service, "runtime"),
        Endpoint(
            "runtime", "llm", _template_pod("vllm deployment", RELEASE, llm["spec"]["template"])
        ),
    ]


@pytest.fixture(scope="session")
def pipeline_labels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The pod labels of each task of the compiled cluster pipeline (kfp-kubernetes'
    podMetadata), by task; {} where a task gets none."""
    from crops.pipeline import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("pipeline") / "crops.yaml", "cluster")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    platform = (
        docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    )
    out = {}
    for executor in docs[0]["deploymentSpec"]["executors"]:
        labels = ((platform.get(executor) or {}).get("podMetadata") or {}).get("labels") or {}
        out[executor.removeprefix("exec-")] = dict(labels)
    return out


def pipeline_pods(labels: dict[str, dict[str, str]]) -> list[Endpoint]:
    return [
        Endpoint("pipeline", "pipeline", Pod(f"task {task}", ns, task_labels))
        for task, task_labels in sorted(labels.items())
        for ns in (KFP_NAMESPACE, RELEASE)
    ]


def cluster_pods() -> list[Endpoint]:
    """Pods around the platform: the KubeRay operator, Knative's activator and the ingress
    gateways, and strangers (no crops labels, or crops' labels with another role)."""
    return [
        Endpoint(
            "cluster",
            "operator",
            pod(
                "kuberay-operator",
                OPERATOR_NAMESPACE,
                **{"app.kubernetes.io/name": "kuberay-operator", COMPONENT: "kuberay-operator"},
            ),
        ),
        Endpoint("cluster", "serving", pod("activator", "knative-serving", app="activator")),
        Endpoint(
            "cluster", "serving", pod("ingressgateway", "istio-system", app="istio-ingressgateway")
        ),
        Endpoint(
            "cluster", "serving", pod("kourier", "kourier-system", app="3scale-kourier-gateway")
        ),
        Endpoint("cluster", "stranger", pod("stranger", "default", app="stranger")),
        Endpoint("cluster", "stranger", pod("debug", RELEASE, app="debug")),
        Endpoint(
            "cluster",
            "stranger",
            pod("impostor", "default", **{PART_OF: "crops", COMPONENT: "web"}),
        ),
    ]


# ------------------------------------------------------------------------------ the checks


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_every_pod_template_is_collected(values_name: str, pipeline_labels) -> None:
    """The checks below are not vacuous: every kind of platform pod is there."""
    objs = rendered(f"helm:{values_name}")
    assert {p["metadata"]["name"] for p in network_policies(objs)} == {
        "default-deny-ingress",
        "allow-predictor",
        "allow-vllm",
        "allow-ray",
        "allow-logsink",
    }
    chart = chart_pods(objs)
    roles = sorted(e.role for e in chart)
    predictors = 1 if values_name == "serverless" else 2
    assert roles == sorted(
        ["ray-node"] * 4
        + ["ray-submitter"] * 2
        + ["predictor"] * predictors
        + ["llm", "abtest", "logsink"]
    ), [str(e) for e in chart]
    runtime = sorted(e.role for e in runtime_pods(values_name, objs))
    assert runtime == sorted(
        ["ray-node"] * 2 + ["ray-submitter", "llm"] + ["predictor"] * predictors
    )
    for task in ("mine", "abtest", "train", "index", "deploy", "serve-llm"):
        assert task in pipeline_labels, sorted(pipeline_labels)


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_chart_pods_talk_only_where_they_must(values_name: str) -> None:
    objs = rendered(f"helm:{values_name}")
    pods = chart_pods(objs) + cluster_pods()
    wrong = wrong_pairs(network_policies(objs), pods, pods, values_name == "serverless")
    assert not wrong, report(wrong)


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_runtime_built_pods_talk_only_where_they_must(values_name: str) -> None:
    """The RayJob, InferenceService (predictor and canary) and vLLM Deployment that the
    pipeline's components build at run time, against the chart's policies."""
    objs = rendered(f"helm:{values_name}")
    pods = chart_pods(objs) + cluster_pods() + runtime_pods(values_name, objs)
    wrong = wrong_pairs(
        network_policies(objs), pods, pods, values_name == "serverless", involving="runtime"
    )
    assert not wrong, report(wrong)


@pytest.mark.parametrize("values_name", VALUE_SETS)
def test_pipeline_task_pods_talk_only_where_they_must(values_name: str, pipeline_labels) -> None:
    """Every task pod of the cluster pipeline, in KFP's namespace and in the release's."""
    objs = rendered(f"helm:{values_name}")
    pods = chart_pods(objs) + cluster_pods() + pipeline_pods(pipeline_labels)
    wrong = wrong_pairs(
        network_policies(objs), pods, pods, values_name == "serverless", involving="pipeline"
    )
    assert not wrong, report(wrong)


def test_without_payload_logging_there_is_no_logsink_and_the_agent_port_stays_closed() -> None:
    """logsink.enabled false and no serverless.requestLog.url: no sink, no agent, no 9081."""
    from support.cluster import render

    objs = render({"logsink": {"enabled": False}})
    assert "logsink" not in {e.role for e in chart_pods(objs)}
    assert "allow-logsink" not in {p["metadata"]["name"] for p in network_policies(objs)}
    pods = chart_pods(objs) + cluster_pods()
    wrong = wrong_pairs(network_policies(objs), pods, pods, False, logged=False)
    assert not wrong, report(wrong)


def _drop(name: str) -> Callable[[list[dict]], list[dict]]:
    return lambda policies: [p for p in policies if p["metadata"]["name"] != name]


def _edit(name: str, change: Callable[[dict], None]) -> Callable[[list[dict]], list[dict]]:
    def doctor(policies: list[dict]) -> list[dict]:
        for p in policies:
            if p["metadata"]["name"] == name:
                change(p["spec"])
        return policies

    return doctor


def _rename_selected_component(spec: dict) -> None:
    spec["podSelector"] = {"matchLabels": {COMPONENT: "vllm"}}


def _close_the_agent_port(spec: dict) -> None:
    for rule in spec["ingress"]:
        rule["ports"] = [p for p in rule["ports"] if p["port"] != 9081]


def _open_to_everyone(spec: dict) -> None:
    for rule in spec["ingress"]:
        rule.pop("from", None)


@pytest.mark.parametrize(
    ("doctor", "caught"),
    [
        # allow-ray dropped: the Ray nodes no longer reach each other.
        (
            _drop("allow-ray"),
            r"ray-node\] in crops -> chart crops-train workers .* port 6379/TCP: expected admitted",
        ),
        # allow-vllm selecting a label vLLM's pods do not carry: nobody reaches vLLM.
        (
            _edit("allow-vllm", _rename_selected_component),
            r"\[ray-node\] .* -> chart deployment crops-vllm \[llm\] .* port 8000/TCP: "
            r"expected admitted",
        ),
        # allow-predictor admitting every pod: vLLM reaches the predictor.
        (
            _edit("allow-predictor", _open_to_everyone),
            r"chart deployment crops-vllm \[llm\] .* -> chart crops-retrieval predictor .* "
            r"port 8080/TCP: expected denied",
        ),
        # the default deny dropped: the A/B pod, which no allow policy selects, is open.
        (
            _drop("default-deny-ingress"),
            r"cluster stranger .* -> chart cronjob crops-abtest \[abtest\] .* expected denied",
        ),
        # allow-predictor without the agent's port: the A/B job cannot reach the predictor's
        # Service, which targets the agent when payload logging is on.
        (
            _edit("allow-predictor", _close_the_agent_port),
            r"chart cronjob crops-abtest \[abtest\] .* -> chart crops-retrieval predictor .* "
            r"port 9081/TCP: expected admitted",
        ),
        # allow-logsink dropped: the predictors' payload logs no longer reach the sink.
        (
            _drop("allow-logsink"),
            r"chart crops-retrieval predictor \[predictor\] .* -> chart deployment crops-logsink "
            r"\[logsink\] .* port 8080/TCP: expected admitted",
        ),
        # allow-logsink admitting every pod: a stranger could write the request log.
        (
            _edit("allow-logsink", _open_to_everyone),
            r"cluster stranger .* -> chart deployment crops-logsink \[logsink\] .* "
            r"port 8080/TCP: expected denied",
        ),
    ],
    ids=[
        "drop-allow-ray",
        "mislabel-allow-vllm",
        "open-allow-predictor",
        "drop-default-deny",
        "close-agent-port",
        "drop-allow-logsink",
        "open-allow-logsink",
    ],
)
def test_a_doctored_policy_fails_the_check(doctor, caught: str) -> None:
    """The check is not blind: each doctored policy set adds the wrong pairs it should."""
    objs = rendered("helm:default")
    pods = chart_pods(objs) + cluster_pods()
    before = set(wrong_pairs(network_policies(objs), pods, pods, False))
    after = set(wrong_pairs(doctor(network_policies(objs)), pods, pods, False))
    new = sorted(after - before)
    assert any(re.search(caught, line) for line in new), report(new)
