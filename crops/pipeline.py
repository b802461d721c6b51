"""`crops pipeline`: compile the Kubeflow pipeline, run it locally under kfp.local, submit it.

The pipeline and its components live in the repository's top-level `pipelines/` and
`components/` folders and install with the package as `crops.pipelines` and
`crops.components` (setup.py). `kfp` is imported inside the functions, so importing this
module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

SCALES = ("tiny", "default", "large")
#: Scales `crops pipeline run --local` accepts (large is for a cluster).
LOCAL_SCALES = ("tiny", "default")
TARGETS = ("local", "cluster")

#: Pipeline arguments of a local run per scale. Both models train to convergence (the train
#: component's stop rule); `max_steps` only caps a tiny smoke run. Training settings not named
#: here are the recipe's (`crops.model.recipe.Recipe`: one Ray Train worker, since on 2 cores a
#: second one slows hash training down, bench/bench_train.py part c; pass `--param workers=N`
#: on a cluster).
#: Here both endpoints, the simulated users and the world share the machine's cores, so the
#: latency guardrail is loose: it measures the laptop, not the model.
LOCAL_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "max_steps": 60,
        "filter_model": "none",
        "synth_budget_s": 15.0,
        "ab_users": 0,
        "ab_days": 2,
        "ab_searches_per_user": 2.0,
        "ab_min_users_per_arm": 50,
        "ab_max_p99_ms": 2000.0,
    },
    "default": {
        "ab_users": 0,
        "ab_days": 5,
        "ab_searches_per_user": 1.6,
        "ab_min_users_per_arm": 500,
        "ab_max_p99_ms": 1000.0,
    },
}

#: kfp.local warnings that say nothing useful for this pipeline (display names and the
#: project image are deliberate; a subprocess run uses the current interpreter).
_QUIET = (
    r".*have no effect in the current local runner.*",
    r".*custom or non-Python base image.*",
)


class PipelineError(ValueError):
    """Bad input or a failed run; the message says which and what to do."""


class HostError(PipelineError):
    """The KFP host cannot be reached, or refused the run."""


class PreflightError(PipelineError):
    """The namespace of the run's pods lacks what they need; `report` lists every problem."""

    def __init__(self, message: str, report) -> None:
        super().__init__(message)
        self.report = report


class ImageWarning(UserWarning):
    """An image reference names no registry host: the cluster resolves it on its own."""


# ------------------------------------------------------------------------- the definitions


def definitions():
    """The `crops.pipelines.crops_pipeline` module (kfp is imported on first use)."""
    from crops.pipelines import crops_pipeline

    return crops_pipeline


def check_scale(scale: str, allowed: tuple[str, ...] = SCALES) -> str:
    if scale not in allowed:
        raise PipelineError(f"scale {scale!r}: use one of {', '.join(allowed)}")
    return scale


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise PipelineError(f"target {target!r}: use one of {', '.join(TARGETS)}")
    return target


def check_max_steps(steps: int) -> int:
    if steps < 1:
        raise PipelineError(f"max_steps must be at least 1, got {steps}")
    return steps


def build(target: str = "local", **options):
    """`build_pipeline(target, **options)`, with bad options as PipelineError."""
    check_target(target)
    try:
        return definitions().build_pipeline(target, **options)
    except ValueError as exc:
        raise PipelineError(str(exc)) from exc


def parameters(pipeline) -> dict[str, tuple[str, Any]]:
    """The pipeline's parameters: name -> (KFP type: STRING, NUMBER_INTEGER, ..., default)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec.pipeline_spec_pb2 import ParameterType

    spec = pipeline.pipeline_spec.root.input_definitions.parameters
    out = {}
    for name, p in spec.items():
        kind = ParameterType.ParameterTypeEnum.Name(p.parameter_type)
        default = (
            json_format.MessageToDict(p.default_value) if p.HasField("default_value") else None
        )
        out[name] = (kind, default)
    return out


def parse_params(pairs: list[str], pipeline) -> dict[str, Any]:
    """`k=v` strings as pipeline arguments, typed as the pipeline declares them."""
    known = parameters(pipeline)
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise PipelineError(f"--param {pair!r}: use NAME=VALUE")
        if key not in known:
            raise PipelineError(
                f"--param {key}: not a pipeline parameter; known: {', '.join(known)}"
            )
        kind = known[key][0]
        try:
            if kind == "NUMBER_INTEGER":
                value: Any = int(raw)
            elif kind == "NUMBER_DOUBLE":
                value = float(raw)
            elif kind == "BOOLEAN":
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1", "yes")
            else:
                value = raw
        except ValueError:
            raise PipelineError(f"--param {key}={raw!r}: expected {kind.lower()}") from None
        args[key] = value
    if "scale" in args:
        check_scale(args["scale"])
    if "target" in args:
        check_target(args["target"])
    if "max_steps" in args:
        check_max_steps(args["max_steps"])
    return args


def compile_pipeline(
    out: str | Path, target: str = "cluster", *, warn_image: bool = True, **options
) -> Path:
    """Write the pipeline's IR YAML for `target`; returns the path. For the cluster, an
    image without a registry host gets an `ImageWarning` (see `image_warning`)."""
    from kfp import compiler

    pipeline = build(target, **options)
    out = Path(out)
    if out.is_dir():
        raise PipelineError(f"--out {out} is a folder: give a file name (crops_pipeline.yaml)")
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, package_path=str(out))
    if target == "cluster" and warn_image:
        warn_images(package_needs(out)["images"])
    return out


def registry_host(image: str) -> str | None:
    """The registry host an image reference names, if any (Docker's rule: a first path part
    with a '.' or a ':' (a port), or 'localhost')."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def image_warning(image: str) -> str | None:
    """What to say about an image without a registry host; None when it names one."""
    if registry_host(image) is not None:
        return None
    return (
        f"image {image!r} names no registry host: the cluster resolves it against its"
        " container runtime's default registry, unless the image is already on the nodes"
        " (`kind load docker-image`); give --image REGISTRY-HOST/crops:TAG to pull it from"
        " your own registry"
    )


def warn_images(images) -> None:
    """`ImageWarning` for each image (once) that names no registry host."""
    for image in dict.fromkeys(images):
        message = image_warning(image)
        if message:
            warnings.warn(message, ImageWarning, stacklevel=3)


def package_needs(path: str | Path) -> dict[str, Any]:
    """What a compiled package needs where its pods run, read from its YAML: `images`, `pvcs`
    (mounted), `secrets` (name -> keys whose env is required, i.e. not optional), `env_secrets`
    (env var -> Secret name, any) and `defaults` (parameter -> default)."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineError(f"{path}: not a compiled pipeline ({exc})") from exc
    if not docs or "deploymentSpec" not in docs[0]:
        raise PipelineError(f"{path}: not a compiled pipeline (no deploymentSpec)")
    spec = docs[0]
    executors = spec["deploymentSpec"].get("executors") or {}
    images = [e["container"]["image"] for e in executors.values() if "container" in e]
    k8s: dict[str, Any] = {}
    for doc in docs[1:]:
        k8s = (doc.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})).get(
            "executors", {}
        ) or k8s

    def constant(entry: dict, key: str) -> str:
        param = entry.get(f"{key}Parameter", {}).get("runtimeValue", {})
        return str(param.get("constant") or entry.get(key) or "")

    pvcs: dict[str, None] = {}
    secrets: dict[str, list[str]] = {}
    env_secrets: dict[str, str] = {}
    for executor in k8s.values():
        for mount in executor.get("pvcMount", []):
            if constant(mount, "pvcName"):
                pvcs[constant(mount, "pvcName")] = None
        for entry in executor.get("secretAsEnv", []):
            name = constant(entry, "secretName")
            for pair in entry.get("keyToEnv", []):
                env_secrets[pair["envVar"]] = name
                if not entry.get("optional", False):
                    keys = secrets.setdefault(name, [])
                    if pair["secretKey"] not in keys:
                        keys.append(pair["secretKey"])
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {
        "images": list(dict.fromkeys(images)),
        "pvcs": list(pvcs),
        "secrets": secrets,
        "env_secrets": env_secrets,
        "defaults": {k: v.get("defaultValue") for k, v in params.items()},
    }


# ------------------------------------------------------------------------- local runs


class _TaskLog:
    """stdout of a local run: every line to the log file, the latest to the progress line."""

    def __init__(self, log: TextIO, echo: TextIO | None) -> None:
        self.log, self.echo = log, echo
        self.task: str | None = None
        self.last = ""
        self.tail: deque[str] = deque(maxlen=40)
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.log.write(text)
            if self.echo is not None:
                self.echo.write(text)
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                clean = _ANSI.sub("", line).strip()
                if clean:
                    self.tail.append(clean)
                    if clean[0] not in '{}[]"' or clean.startswith("[crops"):  # not JSON
                        self.last = clean
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: on_task(event, task, label, detail): event is "start", "update" (detail: the latest log
#: line), "success" or "failure" (detail: seconds).
TaskCallback = Callable[[str, str, str, str], None]


@contextlib.contextmanager
def _watch_tasks(
    labels: dict[str, str], sink: _TaskLog, on_task: TaskCallback | None
) -> Iterator[dict]:
    """Report each kfp.local task as it starts and ends (kfp.local runs them one by one)."""
    from kfp.local.orchestrator import task_executor

    original = task_executor.execute_single_task
    seen: dict[str, dict[str, Any]] = {}
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.5):
            task = sink.task
            if on_task and task:
                on_task("update", task, labels.get(task, task), sink.last)

    def wrapped(*args, **kwargs):
        name = kwargs.get("task_name", args[0] if args else "?")
        label = labels.get(name, name)
        t0 = time.perf_counter()
        if on_task:
            on_task("start", name, label, "")
        sink.tail.clear()
        sink.task, sink.last = name, ""  # the ticker reports it from now on
        try:
            outputs, status = original(*args, **kwargs)
        finally:
            sink.task = None
        seconds = time.perf_counter() - t0
        ok = getattr(status, "name", str(status)) == "SUCCESS"
        seen[name] = {"label": label, "seconds": round(seconds, 1), "ok": ok}
        if not ok:
            seen[name]["log_tail"] = list(sink.tail)
        if on_task:
            on_task("success" if ok else "failure", name, label, f"{seconds:.0f}")
        return outputs, status

    thread = threading.Thread(target=ticker, daemon=True)
    task_executor.execute_single_task = wrapped
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        task_executor.execute_single_task = original


def task_labels(pipeline) -> dict[str, str]:
    """DAG task name -> display name."""
    tasks = pipeline.pipeline_spec.root.dag.tasks
    return {name: (t.task_info.name or name) for name, t in tasks.items()}


def local_arguments(
    scale: str = "default",
    seed: int = 1,
    max_steps: int | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The arguments of a local run: the scale's profile, then the given values."""
    check_scale(scale, LOCAL_SCALES)
    args = {"scale": scale, "seed": seed, "target": "local", **LOCAL_PROFILES[scale]}
    if max_steps is not None:
        args["max_steps"] = check_max_steps(max_steps)
    args.update(params or {})
    check_scale(args["scale"], LOCAL_SCALES)  # also when given as --param scale=...
    if args.get("target") != "local":
        raise PipelineError("a local run deploys nothing: target must be local")
    return args


def run_local(
    out: str | Path,
    arguments: dict[str, Any],
    *,
    on_task: TaskCallback | None = None,
    verbose: bool = False,
    cache: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline under kfp.local (SubprocessRunner, no venv: this interpreter).

    Task outputs go to OUT/<pipeline>-<time>/<task>/; the tasks' logs to OUT/logs/<time>.log
    (and to stdout with `verbose`). Returns where everything is, the offline scores and the
    A/B decision. Raises PipelineError naming the failed task, with its last log lines.
    """
    from kfp import local

    pipeline = build("local")
    known = parameters(pipeline)
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise PipelineError(f"not pipeline parameters: {', '.join(unknown)}")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise PipelineError(f"--out {out}: exists and is not a folder")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = out / "logs" / f"{stamp}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(out),
        raise_on_error=True,
        enable_caching=cache,
    )
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    t0 = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        sink = _TaskLog(log, sys.stdout if verbose else None)
        with (
            warnings.catch_warnings(),
            _watch_tasks(task_labels(pipeline), sink, on_task) as tasks,
            contextlib.redirect_stdout(sink),
        ):
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            try:
                run = pipeline(**arguments)
            except RuntimeError as exc:
                failed = next((t for t in tasks.values() if not t["ok"]), None)
                detail = ""
                if failed:
                    lines = [x for x in failed["log_tail"] if x.strip("-")][-15:]
                    tail = "\n".join(f"  {line}" for line in lines)
                    detail = f"\ntask {failed['label']!r} failed; its last lines:\n{tail}"
                message = _ANSI.sub("", str(exc))
                raise PipelineError(f"{message}{detail}\nfull log: {log_path}") from exc
    wall = time.perf_counter() - t0
    return summarize(run.outputs, tasks, wall, log_path, arguments)


def summarize(
    outputs: dict[str, Any], tasks: dict, wall_s: float, log_path: Path, arguments: dict
) -> dict[str, Any]:
    """Where the run's outputs are, the offline scores and the A/B decision."""
    paths = {name: art.path for name, art in outputs.items()}
    run_dir = Path(paths["offline_table"]).parent.parent
    offline = json.loads(Path(paths["offline_results"]).read_text())
    ab_dir = Path(paths["ab_results"])
    ab = json.loads((ab_dir / "ab_report.json").read_text())
    summary = {
        "run_dir": str(run_dir),
        "wall_s": round(wall_s, 1),
        "arguments": arguments,
        "tasks": tasks,
        "log": str(log_path),
        "offline_table": paths["offline_table"],
        "offline_results": paths["offline_results"],
        "offline": {"columns": offline["columns"], "scores": offline["scores"]},
        "isvc_manifest": paths["isvc_manifest"],
        "ab_report_json": str(ab_dir / "ab_report.json"),
        "ab_report_md": str(ab_dir / "report.md"),
        "decision": ab["decision"],
        "looks_run": ab["looks_run"],
        "looks_planned": ab["looks_planned"],
        "ab_metrics": ab["analysis"]["metrics"],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["summary_json"] = str(run_dir / "summary.json")
    return summary


# ------------------------------------------------------------------------- a KFP backend


def check_host(host: str, timeout_s: float = 5.0) -> str:
    """Refuse a KFP host that does not answer HTTP, before the client retries for minutes."""
    host_info(host, timeout_s)
    return host


def host_info(host: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The KFP API's healthz answer ({} when it is not JSON: a proxy's page, say), or
    HostError when nothing answers HTTP there. Its `multi_user` tells the two KFP modes apart."""
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PipelineError(f"--host {host!r}: give the KFP API's URL, http(s)://host[:port]")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        answer = httpx.get(url, timeout=timeout_s)  # any HTTP answer: something listens there
    except httpx.HTTPError as exc:
        raise HostError(
            f"the KFP host {host} is unreachable ({type(exc).__name__}: {exc}); is the API"
            " server up, and the URL right (e.g. a `kubectl port-forward svc/ml-pipeline"
            " 8888:8888 -n kubeflow` gives http://localhost:8888)?"
        ) from exc
    try:
        info = answer.json() if answer.status_code == 200 else {}
    except ValueError:
        info = {}
    return info if isinstance(info, dict) else {}


#: Where standalone KFP runs pipeline pods (its own namespace) unless installed elsewhere.
KFP_NAMESPACE = "kubeflow"


def preflight(
    namespace: str,
    service_account: str,
    needs: dict[str, Any],
    arguments: dict[str, Any],
    *,
    kubeconfig: str | None = None,
    multi_user: bool = False,
    client=None,
):
    """`crops.k8s.preflight.check` for a compiled package and its arguments: its PVCs, and its
    LLM Secret when the run asks for LLM synthesis through a server (llm_backend `endpoint`).
    PreflightError lists every problem; HostError when the Kubernetes API cannot be reached.
    Returns the report."""
    from crops.k8s import preflight as pf
    from crops.k8s.client import KubeError, api_client

    llm_secret = needs["env_secrets"].get("CROPS_LLM_API_KEY") or needs["env_secrets"].get(
        "CROPS_LLM_ENDPOINT"
    )
    value = {**needs["defaults"], **arguments}.get
    # LLM synthesis through a server was asked for: the mine task's backend is `endpoint`.
    llm = bool(llm_secret) and value("llm_backend") == "endpoint"
    endpoint_given = bool(value("llm_endpoint")) or bool(value("serve_vllm"))
    endpoint_given = endpoint_given or value("llm_backend", "endpoint") != "endpoint"
    try:
        if client is None:
            client = api_client(kubeconfig)
        report = pf.check(
            client,
            namespace,
            service_account,
            llm=llm,
            endpoint_given=endpoint_given,
            llm_secret=llm_secret or pf.LLM_SECRET,
            pvcs=tuple(needs["pvcs"]),
            multi_user=multi_user,
            images=tuple(needs["images"]),
        )
    except pf.PreflightUnreachable as exc:
        raise HostError(f"preflight: {exc}; or submit with --skip-preflight") from exc
    except KubeError as exc:  # no usable kubeconfig
        raise PipelineError(f"preflight: {exc}; give --kubeconfig, or --skip-preflight") from exc
    if not report.ok:
        raise PreflightError(report.text(), report)
    return report


def submit(
    host: str,
    *,
    arguments: dict[str, Any] | None = None,
    experiment: str = "crops",
    run_name: str | None = None,
    package: str | Path | None = None,
    namespace: str | None = None,
    service_account: str | None = "crops-pipeline",
    options: dict[str, Any] | None = None,
    kubeconfig: str | None = None,
    skip_preflight: bool = False,
) -> dict[str, Any]:
    """Compile for the cluster (or take `package`), check the pods' namespace (the preflight)
    and create a run on the KFP backend.

    `namespace` is where the run's pods run (default `kubeflow`, standalone KFP's own) and the
    pipeline's `namespace` argument (where its RayJobs, InferenceService and vLLM go: they
    share the artifacts PVC with the tasks); on multi-user KFP (its healthz says so) it is also
    the profile namespace the run is filed in. Order: arguments (PipelineError), the host
    (HostError, fast), compile, the preflight (PreflightError listing every problem; HostError
    when the Kubernetes API is down), then the run. Registry-less images get `ImageWarning`.
    """
    import tempfile

    arguments = dict(arguments or {})
    pods_ns = namespace or KFP_NAMESPACE
    given = arguments.get("namespace")
    if given is not None and given != pods_ns:
        raise PipelineError(
            f"--param namespace={given} differs from the namespace of the pipeline's pods "
            f"({pods_ns}{'' if namespace else ', the default'}): the tasks there share the "
            f"artifacts PVC with the RayJobs and the InferenceService, so both must be one "
            f"namespace; give --namespace {given} (and install the platform there) instead"
        )
    info = host_info(host)
    multi_user = info.get("multi_user") is True
    import kfp

    with tempfile.TemporaryDirectory(prefix="crops-pipeline-") as tmp:
        if package:
            path = Path(package)
            if not path.is_file():
                raise PipelineError(f"--package {path}: not found")
        else:
            path = compile_pipeline(
                Path(tmp) / "crops_pipeline.yaml",
                "cluster",
                warn_image=False,
                **(options or {}),
            )
        needs = package_needs(path)
        warn_images(needs["images"])
        if "namespace" in needs["defaults"]:
            arguments["namespace"] = pods_ns  # carried end to end
        report = None
        if not skip_preflight:
            report = preflight(
                pods_ns,
                service_account or "default",
                needs,
                arguments,
                kubeconfig=kubeconfig,
                multi_user=multi_user,
            )
        # Standalone KFP refuses a namespace ("single-user mode"); multi-user requires one.
        kfp_ns = pods_ns if multi_user else (namespace if not info else None)
        try:
            client = kfp.Client(host=host, namespace=kfp_ns or KFP_NAMESPACE)
            result = client.create_run_from_pipeline_package(
                str(path),
                arguments=arguments,
                run_name=run_name or f"crops-{datetime.now():%Y%m%d-%H%M%S}",
                experiment_name=experiment,
                namespace=kfp_ns,
                service_account=service_account,
            )
        except Exception as exc:  # the client raises urllib3, ApiException, ValueError, ...
            reason = getattr(exc, "reason", None) or str(exc).strip().splitlines()[0]
            raise HostError(
                f"the KFP host {host} refused the run: {type(exc).__name__}: {reason}"
            ) from exc
    run_id = result.run_id
    return {
        "run_id": run_id,
        "url": f"{host.rstrip('/')}/#/runs/details/{run_id}",
        "experiment": experiment,
        "namespace": pods_ns,
        "kfp_namespace": kfp_ns,
        "multi_user": multi_user,
        "service_account": service_account,
        "preflight": report,
    }


__all__ = [
    "LOCAL_PROFILES",
    "LOCAL_SCALES",
    "SCALES",
    "TARGETS",
    "HostError",
    "ImageWarning",
    "PipelineError",
    "PreflightError",
    "build",
    "check_host",
    "compile_pipeline",
    "definitions",
    "host_info",
    "image_warning",
    "local_arguments",
    "parameters",
    "package_needs",
    "parse_params",
    "preflight",
    "registry_host",
    "run_local",
    "submit",
]
