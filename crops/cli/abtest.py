"""`crops abtest ...`: the canary decision from logs (`analyze`), the ledger (`status`), and
simulated users as a log source (`crops abtest --world W ...`, for demos, kind and minikube).

The policy and `--apply` options are shared by the two ways of deciding, so both commands take
them from `_policy` and `_apply` here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from crops.console import console, err, fail, given, options, progress_bar, summary_table

abtest_app = typer.Typer(
    help=(
        "Online A/B tests and canary decisions. `crops abtest analyze` decides from the "
        "platform's logs; `crops abtest --world W --control .. --treatment .. --out R` sends "
        "simulated users and analyses the logs they leave."
    ),
    add_completion=False,
)

Primary = Annotated[str | None, typer.Option(help="ctr | long_play_rate | reformulation_rate")]
Alpha = Annotated[float | None, typer.Option(help="two-sided level over all looks")]
Spending = Annotated[str | None, typer.Option(help="obrien-fleming | pocock")]
MinUsers = Annotated[int | None, typer.Option(help="no promotion below this many users per arm")]
MaxErr = Annotated[float | None, typer.Option(help="treatment errors / requests limit")]
MaxP99 = Annotated[float | None, typer.Option(help="treatment p99 latency limit (ms)")]
Share = Annotated[float | None, typer.Option(help="planned share of users in treatment, 0 < s < 1")]
Ledger = Annotated[
    str | None,
    typer.Option(help="ledger folder on the artifacts volume (default: OUT/ledger)"),
]
Apply = Annotated[
    bool, typer.Option(help="patch the InferenceService's canary traffic with the decision")
]
Isvc = Annotated[str | None, typer.Option(help="InferenceService name (--apply)")]
Namespace = Annotated[str | None, typer.Option(help="its namespace (--apply)")]
CanaryMode = Annotated[
    str, typer.Option(help="auto | Standard (spec.canary) | Serverless (--apply)")
]
Kubeconfig = Annotated[
    str | None, typer.Option(help="kubeconfig (--apply; default: in-cluster, ~/.kube/config)")
]


def _policy(**values: Any):
    """The policy options given; one left out keeps CanaryPolicy's default (as the others keep
    AnalyzeConfig's and AbTestConfig's: importing them here would slow every `crops` command,
    so --help names the config instead of the value)."""
    from crops.evaluate.sequential import CanaryPolicy

    return options(CanaryPolicy, **given(**values))


def _kube(apply: bool, isvc: str | None, namespace: str | None, mode: str, kubeconfig):
    """Check the --apply options and connect before the analysis, not after it."""
    if apply and not (isvc and namespace):
        fail("--apply needs --isvc NAME and --namespace NS")
    if not apply and (isvc or namespace):
        fail("--isvc and --namespace go with --apply")
    if mode not in ("auto", "Standard", "Serverless"):
        fail(f"--canary-mode must be auto, Standard or Serverless, got {mode!r}")
    if not apply:
        return None
    from crops.k8s.client import KubeError, api_client

    try:
        return api_client(kubeconfig)
    except KubeError as exc:
        fail(str(exc))


def _apply(decision: dict, kube, isvc: str, namespace: str, mode: str) -> None:
    from crops.k8s.client import KubeError
    from crops.k8s.rollout import apply_decision

    try:
        applied = apply_decision(decision, isvc=isvc, namespace=namespace, client=kube, mode=mode)
    except KubeError as exc:
        fail(str(exc), code=1)
        return
    where = f"InferenceService {namespace}/{isvc}"
    if applied.get("noop"):
        console.print(f"{decision['action']}: {applied['noop']}")
    elif not applied["patched"]:
        console.print(
            f"{where}: hold, left unchanged (canary at {applied['canary_traffic_percent']} %)"
        )
    elif decision["action"] == "promote":
        console.print(f"{where}: canary promoted to all traffic")
    else:
        console.print(f"{where}: canary rolled back, all traffic to the previous predictor")


def _show(report: dict, out: Path) -> None:
    """The decision, its reasons and the headline numbers on the terminal."""
    decision = report["decision"]
    colour = {"promote": "green", "hold": "yellow", "rollback": "red"}[decision["action"]]
    console.print(
        f"[bold {colour}]{decision['action'].upper()}[/] after look {report['looks_run']} of "
        f"{report['looks_planned']}",
        highlight=False,
    )
    for reason in decision["reasons"]:
        console.print(f"  - {escape(reason)}", highlight=False, soft_wrap=True)
    analysis, shown = report["analysis"], {}
    if analysis.get("arms"):
        for arm in ("control", "treatment"):
            shown[f"{arm} users"] = analysis["arms"][arm]["users"]
        for metric, lift in analysis["metrics"].items():
            for arm in ("control", "treatment"):
                shown[f"{metric} {arm}"] = analysis["arms"][arm]["metrics"][metric]["value"]
            shown[f"{metric} lift"] = lift["lift"]
            shown[f"{metric} p"] = lift["p_value"]
    for arm, g in report.get("guardrails", {}).items():
        shown[f"{arm} error rate"] = g["error_rate"]
        shown[f"{arm} p99 ms"] = g["p99_ms"]
    hyg = report.get("hygiene", {})
    for kind in ("search_log", "request_log"):
        if kind in hyg:
            shown[f"{kind} quarantined"] = hyg[kind]["rows"] - hyg[kind]["valid"]
    if shown:
        console.print(summary_table(shown, "A/B test"))
    if report.get("pending"):
        console.print(f"next: {escape(report['pending'])}", highlight=False)
    console.print(f"report written to {out / 'ab_report.json'} and {out / 'report.md'}")


def _run_and_report(
    run: Callable[[Any], dict],
    errors: tuple[type[Exception], ...],
    out: Path,
    kube: Any,
    isvc: str | None,
    namespace: str | None,
    mode: str,
    *,
    failed: str = "",
) -> None:
    """Run the A/B job with a progress bar, show its decision, apply it when `kube` is set."""
    try:
        with progress_bar() as progress:
            report = run(progress)
    except errors as exc:
        fail(f"{exc}{failed}")
        return
    _show(report, out)
    if kube is not None:
        _apply(report["decision"], kube, isvc or "", namespace or "", mode)


@abtest_app.command()
def analyze(
    logs: Annotated[str, typer.Option(help="log folder or s3:// prefix (crops.abtest.layout)")],
    out: Annotated[Path, typer.Option(help="report folder R")],
    experiment: Annotated[str | None, typer.Option(help="experiment id in the ledger")] = None,
    ledger: Ledger = None,
    control_hash: Annotated[
        str | None, typer.Option(help="control model hash (default: read off the logs)")
    ] = None,
    candidate_hash: Annotated[
        str | None, typer.Option(help="candidate model hash (default: read off the logs)")
    ] = None,
    treatment_share: Share = None,
    looks: Annotated[int | None, typer.Option(help="planned looks, one per day")] = None,
    primary: Primary = None,
    alpha: Alpha = None,
    spending: Spending = None,
    min_users_per_arm: MinUsers = None,
    max_error_rate: MaxErr = None,
    max_p99_ms: MaxP99 = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(help="analysis time, UTC (default: now); days ending after it wait"),
    ] = None,
    settle_s: Annotated[
        float | None, typer.Option(help="a day is complete this long after (s)")
    ] = None,
    max_skew_s: Annotated[float | None, typer.Option(help="clock skew flagged beyond (s)")] = None,
    break_stale_lock: Annotated[
        bool,
        typer.Option(help="break a ledger lock older than 6 h or left by a dead process"),
    ] = False,
    apply: Apply = False,
    isvc: Isvc = None,
    namespace: Namespace = None,
    canary_mode: CanaryMode = "auto",
    kubeconfig: Kubeconfig = None,
) -> None:
    """Decide a canary from the platform's logs: one look per complete day, via the ledger."""
    from datetime import UTC

    from crops.abtest.analyze import AnalyzeConfig, AnalyzeError, analyze_logs
    from crops.abtest.layout import LogsError
    from crops.abtest.ledger import LedgerError
    from crops.schema import SchemaError

    kube = _kube(apply, isvc, namespace, canary_mode, kubeconfig)
    policy = _policy(
        primary=primary,
        alpha=alpha,
        looks=looks,
        spending=spending,
        min_users_per_arm=min_users_per_arm,
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
    )
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    cfg = options(
        AnalyzeConfig,
        logs=logs,
        out=out,
        ledger=ledger,
        experiment=experiment,
        control_hash=control_hash,
        candidate_hash=candidate_hash,
        policy=policy,
        as_of=as_of,
        break_stale_lock=break_stale_lock,
        **given(treatment_share=treatment_share, settle_s=settle_s, max_skew_s=max_skew_s),
    )
    _run_and_report(
        lambda progress: analyze_logs(cfg, progress),
        (LogsError, SchemaError, AnalyzeError, LedgerError),
        out,
        kube,
        isvc,
        namespace,
        canary_mode,
        failed=" (no decision written)",
    )


@abtest_app.command()
def status(
    ledger: Annotated[str, typer.Option(help="ledger folder (or s3:// prefix, read-only)")],
    as_json: Annotated[bool, typer.Option("--json", help="rows as JSON")] = False,
) -> None:
    """The experiments in a ledger: looks taken, alpha spent, last decision, who holds a lock."""
    import json

    from crops.abtest.ledger import LedgerError, format_status
    from crops.abtest.ledger import status as ledger_status

    try:
        rows = ledger_status(ledger)
    except (LedgerError, OSError) as exc:
        fail(str(exc))
        return
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        console.print(format_status(rows), highlight=False, soft_wrap=True)


@abtest_app.callback(invoke_without_command=True)
def simulated(
    ctx: typer.Context,
    world: Annotated[Path | None, typer.Option(help="a simulated world (`crops simulate`)")] = None,
    control: Annotated[
        str | None, typer.Option(help="control arm: a KServe v1 URL or a MODEL_DIR")
    ] = None,
    treatment: Annotated[
        str | None, typer.Option(help="treatment arm: a KServe v1 URL or a MODEL_DIR")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="report folder R (logs under R/logs)")] = None,
    ledger: Ledger = None,
    treatment_share: Share = None,
    users: Annotated[int | None, typer.Option(help="a seeded sample of users (default all)")] = (
        None
    ),
    days: Annotated[
        int | None, typer.Option(help="simulated days; a sequential look after each")
    ] = None,
    searches_per_user: Annotated[
        float | None, typer.Option(help="mean searches per user a day")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="traffic seed (same seed, same report)")] = None,
    salt: Annotated[str | None, typer.Option(help="salt of the assignment hash")] = None,
    control_index: Annotated[
        Path | None, typer.Option(help="INDEX_DIR for a MODEL_DIR control (default: exact)")
    ] = None,
    treatment_index: Annotated[
        Path | None, typer.Option(help="INDEX_DIR for a MODEL_DIR treatment (default: exact)")
    ] = None,
    primary: Primary = None,
    alpha: Alpha = None,
    spending: Spending = None,
    min_users_per_arm: MinUsers = None,
    max_error_rate: MaxErr = None,
    max_p99_ms: MaxP99 = None,
    timeout_s: Annotated[float | None, typer.Option(help="per-request endpoint timeout")] = None,
    concurrency: Annotated[int | None, typer.Option(help="requests in flight per arm")] = None,
    apply: Apply = False,
    isvc: Isvc = None,
    namespace: Namespace = None,
    canary_mode: CanaryMode = "auto",
    kubeconfig: Kubeconfig = None,
) -> None:
    """Simulated users search both arms for DAYS days; their logs are analysed day by day."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [
        f"--{n}"
        for n, v in (("world", world), ("control", control), ("treatment", treatment), ("out", out))
        if v is None
    ]
    if missing:
        err.print(ctx.get_help())
        fail(f"missing {', '.join(missing)} (or use `crops abtest analyze` on logs)")
    assert out is not None
    from crops.abtest.arms import AbTestError
    from crops.abtest.simulate import AbTestConfig, run_abtest

    kube = _kube(apply, isvc, namespace, canary_mode, kubeconfig)
    policy = _policy(
        primary=primary,
        alpha=alpha,
        spending=spending,
        min_users_per_arm=min_users_per_arm,
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
    )
    cfg = options(
        AbTestConfig,
        world=world,
        control=control,
        treatment=treatment,
        control_index=control_index,
        treatment_index=treatment_index,
        users=users,
        policy=policy,
        **given(
            treatment_share=treatment_share,
            days=days,
            searches_per_user=searches_per_user,
            seed=seed,
            salt=salt,
            timeout_s=timeout_s,
            concurrency=concurrency,
        ),
        ledger=ledger,
        out=out,
    )
    _run_and_report(
        lambda progress: run_abtest(cfg, progress=progress),
        (AbTestError,),
        out,
        kube,
        isvc,
        namespace,
        canary_mode,
    )


__all__ = ["abtest_app"]
