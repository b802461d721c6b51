"""A small evaluator of Kubernetes NetworkPolicies (networking.k8s.io/v1) for the tests.

It answers "is traffic from pod A to pod B on port P admitted by these policies", offline,
from the policy objects as the chart renders them. The semantics are Kubernetes' own
(https://kubernetes.io/docs/concepts/services-networking/network-policies/):

* A pod is isolated for ingress (egress) when some policy in its namespace selects it
  (`spec.podSelector`) and lists "Ingress" ("Egress") in `policyTypes`. Without
  `policyTypes` a policy has "Ingress" always and "Egress" when it has `egress` rules.
* A connection needs both ends to agree: the source's egress and the destination's ingress.
  A direction in which the pod is not isolated admits everything. Where it is isolated, the
  union of the selecting policies' rules decides: some rule must match both the peer
  (`from` / `to`; absent or empty: every peer) and the port (`ports`; absent or empty:
  every port).
* Peers: `podSelector` alone selects pods in the policy's own namespace; `namespaceSelector`
  alone every pod in the namespaces it selects (matched against the namespace's labels,
  which always include `kubernetes.io/metadata.name`); both together, the pods matching the
  pod selector in the namespaces matching the namespace selector. `ipBlock` peers are for
  addresses outside the cluster: pods here have no IPs, so an ipBlock never matches a pod
  (a conservative deny; what a CNI does with pod IPs inside an ipBlock is left open by
  Kubernetes).
* Ports: `protocol` defaults to TCP; `port` absent: every port of the protocol; a number,
  optionally a range up to `endPort`; a name, resolved against the destination pod's
  container ports (name and protocol).
* Label selectors: `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist)
  all must hold; an empty selector matches everything. NotIn holds when the key is absent.

Malformed policies (unknown operators, peers without selectors, endPort with a named port,
a policy without a podSelector) raise ValueError instead of being guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class ContainerPort:
    port: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    """A pod as the policies see it: where it runs, its labels, its containers' ports."""

    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[ContainerPort, ...] = ()

    @classmethod
    def from_template(cls, name: str, namespace: str, template: Mapping[str, Any]) -> Pod:
        """From a pod template (`{metadata: {labels}, spec: {containers}}`)."""
        labels = ((template.get("metadata") or {}).get("labels")) or {}
        return cls(name, namespace, dict(labels), container_ports(template.get("spec") or {}))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def container_ports(pod_spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    """The declared ports of a pod spec's containers (init containers included)."""
    out = []
    for key in ("initContainers", "containers"):
        for container in pod_spec.get(key) or []:
            for p in container.get("ports") or []:
                out.append(
                    ContainerPort(int(p["containerPort"]), p.get("name"), p.get("protocol", "TCP"))
                )
    return tuple(out)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


# ------------------------------------------------------------------------------ selectors


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector matches `labels` (None: the field is absent; callers decide)."""
    if selector is None:
        raise ValueError("a label selector is required here")
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ValueError(f"unknown label selector fields: {sorted(unknown)}")
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr.get("operator"), expr.get("values") or []
        if op not in OPERATORS:
            raise ValueError(f"matchExpressions operator {op!r}: use one of {OPERATORS}")
        if op in ("In", "NotIn") and not values:
            raise ValueError(f"matchExpressions {key} {op}: values must not be empty")
        if op in ("Exists", "DoesNotExist") and values:
            raise ValueError(f"matchExpressions {key} {op}: values must be empty")
        present = key in labels
        if op == "In" and not (present and labels[key] in map(str, values)):
            return False
        if op == "NotIn" and present and labels[key] in map(str, values):
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


# ------------------------------------------------------------------------------ policies


@dataclass(frozen=True)
class Policy:
    name: str
    namespace: str
    pod_selector: Mapping[str, Any]
    types: frozenset[str]
    ingress: tuple[Mapping[str, Any], ...]
    egress: tuple[Mapping[str, Any], ...]

    @classmethod
    def parse(cls, obj: Mapping[str, Any], default_namespace: str = "default") -> Policy:
        if obj.get("kind") != "NetworkPolicy":
            raise ValueError(f"not a NetworkPolicy: {obj.get('kind')!r}")
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        name = meta.get("name", "?")
        if "podSelector" not in spec or spec["podSelector"] is None:
            raise ValueError(f"NetworkPolicy {name}: spec.podSelector is required ({{}}: all)")
        ingress = tuple(spec.get("ingress") or ())
        egress = tuple(spec.get("egress") or ())
        types = spec.get("policyTypes")
        if types is None:
            types = ["Ingress"] + (["Egress"] if egress else [])
        if set(types) - {"Ingress", "Egress"}:
            raise ValueError(f"NetworkPolicy {name}: policyTypes {types}")
        policy = cls(
            name,
            meta.get("namespace") or default_namespace,
            spec["podSelector"],
            frozenset(types),
            ingress,
            egress,
        )
        for direction, rules in (("from", ingress), ("to", egress)):
            for rule in rules:
                for peer in rule.get(direction) or []:
                    _check_peer(name, peer)
                for port in rule.get("ports") or []:
                    _check_port(name, port)
        return policy

    def selects(self, pod: Pod) -> bool:
        return pod.namespace == self.namespace and selector_matches(self.pod_selector, pod.labels)


def _check_peer(policy: str, peer: Mapping[str, Any]) -> None:
    keys = set(peer) & {"podSelector", "namespaceSelector", "ipBlock"}
    if set(peer) - keys:
        raise ValueError(f"NetworkPolicy {policy}: unknown peer fields {sorted(set(peer) - keys)}")
    if not keys:
        raise ValueError(f"NetworkPolicy {policy}: a peer needs a selector or an ipBlock")
    if "ipBlock" in keys and len(keys) > 1:
        raise ValueError(f"NetworkPolicy {policy}: ipBlock cannot be combined with selectors")


def _check_port(policy: str, port: Mapping[str, Any]) -> None:
    protocol = port.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise ValueError(f"NetworkPolicy {policy}: protocol {protocol!r}")
    if "endPort" in port:
        if not isinstance(port.get("port"), int):
            raise ValueError(f"NetworkPolicy {policy}: endPort needs a numeric port")
        if port["endPort"] < port["port"]:
            raise ValueError(f"NetworkPolicy {policy}: endPort below port")


# ------------------------------------------------------------------------------ evaluation


class NetworkPolicies:
    """The policies of a cluster and the labels of its namespaces.

    `namespaces` maps namespace names to their labels; every namespace, listed or not, also
    carries `kubernetes.io/metadata.name: <name>` as the API server sets it.
    """

    def __init__(
        self,
        policies: Iterable[Mapping[str, Any]],
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
        default_namespace: str = "default",
    ) -> None:
        self.policies = [Policy.parse(p, default_namespace) for p in policies]
        self.namespaces = {k: dict(v) for k, v in (namespaces or {}).items()}

    def namespace_labels(self, name: str) -> dict[str, str]:
        return {**self.namespaces.get(name, {}), NAME_LABEL: name}

    def allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> Verdict:
        """Whether a connection from `src` to `dst:port/protocol` is admitted at both ends."""
        out = self.egress_allowed(src, dst, port, protocol)
        if not out:
            return out
        into = self.ingress_allowed(src, dst, port, protocol)
        return Verdict(into.allowed, f"{out.reason}; {into.reason}")

    def ingress_allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> Verdict:
        return self._direction("Ingress", owner=dst, peer=src, dst=dst, port=port, proto=protocol)

    def egress_allowed(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> Verdict:
        return self._direction("Egress", owner=src, peer=dst, dst=dst, port=port, proto=protocol)

    def _direction(
        self, kind: str, owner: Pod, peer: Pod, dst: Pod, port: int, proto: str
    ) -> Verdict:
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol {proto!r}")
        selecting = [p for p in self.policies if kind in p.types and p.selects(owner)]
        if not selecting:
            return Verdict(True, f"{kind.lower()} of {owner}: not isolated")
        field_ = "from" if kind == "Ingress" else "to"
        for policy in selecting:
            rules = policy.ingress if kind == "Ingress" else policy.egress
            for i, rule in enumerate(rules):
                peers = rule.get(field_) or []
                if peers and not any(self._peer_matches(policy, p, peer) for p in peers):
                    continue
                if not self._ports_match(rule.get("ports") or [], dst, port, proto):
                    continue
                return Verdict(True, f"{kind.lower()} admitted by {policy.name} rule {i}")
        names = ", ".join(p.name for p in selecting)
        return Verdict(False, f"{kind.lower()} of {owner} isolated by [{names}]; no rule admits")

    def _peer_matches(self, policy: Policy, peer: Mapping[str, Any], pod: Pod) -> bool:
        if "ipBlock" in peer:
            return False  # pods have no addresses here (see the module docstring)
        pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
        if namespaces is None:
            in_namespace = pod.namespace == policy.namespace
        else:
            in_namespace = selector_matches(namespaces, self.namespace_labels(pod.namespace))
        return in_namespace and (pods is None or selector_matches(pods, pod.labels))

    @staticmethod
    def _ports_match(ports: list[Mapping[str, Any]], dst: Pod, port: int, proto: str) -> bool:
        if not ports:
            return True
        for entry in ports:
            if entry.get("protocol", "TCP") != proto:
                continue
            want = entry.get("port")
            if want is None:
                return True
            if isinstance(want, int):
                if want <= port <= entry.get("endPort", want):
                    return True
            elif any(
                cp.name == want and cp.protocol == proto and cp.port == port for cp in dst.ports
            ):
                return True
        return False
