"""What the deploy tests (tests/deploy/) share: the objects of a rendering by kind, the pod specs
an object will run, an InferenceService's canaries and deployment mode, the `crops serve` and
`crops abtest` command lines the chart writes, Kubernetes resource quantities, and the
server-side dry run with the comparison that notices a field the server dropped."""

from __future__ import annotations

import re
import shlex

KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
RAY = ("ray.io", "v1", "rayjobs")


# ------------------------------------------------------------------- rendering


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """Every pod spec an object will run, named by where it sits."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [("template", spec["template"]["spec"])]
    if kind == "CronJob":
        return [("jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "RayJob":
        cluster = spec["rayClusterSpec"]
        out = [("head", cluster["headGroupSpec"]["template"]["spec"])]
        out += [
            (f"workers {g['groupName']}", g["template"]["spec"])
            for g in cluster.get("workerGroupSpecs", [])
        ]
        if "submitterPodTemplate" in spec:
            out.append(("submitter", spec["submitterPodTemplate"]["spec"]))
        return out
    if kind == "InferenceService":
        # KServe's components carry the pod spec's fields inline; each Standard-mode canary
        # (spec.canary, KServe 0.20+) runs its predictor as a Deployment of its own.
        out = [(c, spec[c]) for c in ("predictor", "transformer", "explainer") if c in spec]
        out += [(f"canary {c['predictor'].get('name')}", c["predictor"]) for c in canaries(obj)]
        return out
    return []


def canaries(isvc: dict) -> list[dict]:
    """The Standard-mode canaries of an InferenceService: `{trafficPercent, predictor}`."""
    return (isvc.get("spec") or {}).get("canary") or []


def deployment_mode(isvc: dict) -> str:
    """Standard or Serverless, as `crops abtest --canary-mode` names them."""
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    return {"RawDeployment": "Standard"}.get(mode, mode)


def serve_options(predictor: dict) -> dict[str, str]:
    """The options of the predictor's one `crops serve` container (`crops` is the command,
    or the image's entrypoint when none is given)."""
    (c,) = predictor["containers"]
    assert c.get("command", ["crops"]) == ["crops"] and c["args"][0] == "serve", c
    return dict(zip(c["args"][1::2], c["args"][2::2], strict=True))


def abtest_pod(objs: list[dict]) -> dict:
    return by_kind(objs, "CronJob")["crops-abtest"]["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]


def abtest_command(script: str) -> tuple[list[str], dict[str, str]]:
    """The command (`crops abtest` or `crops abtest analyze`) and the options of the command
    line the CronJob's shell runs."""
    words = shlex.split(script)
    assert words[:3] == ["exec", "crops", "abtest"], words
    command = ["crops", "abtest"] + (["analyze"] if words[3:4] == ["analyze"] else [])
    opts: dict[str, str] = {}
    last = None
    for word in words[len(command) + 1 :]:
        if word.startswith("--"):
            assert word not in opts, f"{word} given twice"
            last = word
            opts[word] = ""
        else:
            assert last is not None and opts[last] == "", f"{word!r} follows no option"
            opts[last] = word
    return command, opts


def abtest_options(script: str) -> dict[str, str]:
    """The options of the `crops abtest [analyze]` command line the CronJob's shell runs."""
    return abtest_command(script)[1]


# ------------------------------------------------------------------ quantities


_UNITS = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_UNITS |= {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2Gi", 4) as a number."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(value))
    if m is None or m[2] not in _UNITS:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m[1]) * _UNITS[m[2]]


# -------------------------------------------------------------------- dry runs


def for_server(dyn, obj: dict) -> dict:
    """The object as this API server can take it. The test server is Kubernetes 1.20, which
    serves CronJob only as batch/v1beta1 (batch/v1 arrived in 1.21); the two versions have
    the same fields for everything rendered here, so the dry run checks the same object under
    the older version. Real clusters get batch/v1."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    if obj["kind"] == "CronJob" and obj["apiVersion"] == "batch/v1":
        try:
            dyn.resources.get(api_version="batch/v1", kind="CronJob")
        except ResourceNotFoundError:
            return {**obj, "apiVersion": "batch/v1beta1"}
    return obj


def dry_run(dyn, obj: dict, namespace: str) -> dict:
    """Server-side apply with dryRun=All: admission, defaulting and schema validation run,
    nothing is stored. Returns the object as the server would have stored it."""
    obj = for_server(dyn, obj)
    resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    result = dyn.server_side_apply(
        resource,
        body=obj,
        namespace=namespace if resource.namespaced else None,
        field_manager="crops-tests",
        dry_run="All",
    )
    return result.to_dict()


def dropped(sent, got, path: str = "") -> list[str]:
    """Fields of `sent` the server did not keep. Kubernetes 1.20 drops unknown fields of
    built-in objects and prunes those a CRD's schema does not know, without an error: a
    misspelt field would pass a dry run unnoticed but for this comparison."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [path or "."]
        return [
            p
            for key, value in sent.items()
            for p in (
                [f"{path}.{key}"] if key not in got else dropped(value, got[key], f"{path}.{key}")
            )
        ]
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(sent, got, strict=True))
            for p in dropped(a, b, f"{path}[{i}]")
        ]
    if sent == got:
        return []
    try:
        if quantity(sent) == quantity(got):
            return []
    except ValueError:
        pass
    return [f"{path}: {sent!r} became {got!r}"]
