"""The online A/B job: simulated users search two retrieval endpoints; a canary decision.

Each arm is a KServe v1 retrieval endpoint: a URL is used as it is; a model folder gets an exact
index over the world's videos and a `crops serve` subprocess on a free loopback port for the
job's lifetime. Users split between the arms by a salted hash of their id, so a user stays in
one arm for every day of the test and across reruns. Each simulated day is one sequential look:
each day's per-user sums add up to the test so far, the statistics (`crops.evaluate.abstats`)
and the canary policy (`crops.evaluate.canary`) decide promote / hold / rollback, and the test
stops at the first promote or rollback. Endpoint errors and timeouts are traffic like any other: the
user sees an empty page, and the guardrails count them.

A rerun with the same seed and inputs writes the same `ab_report.json`, apart from the
wall-clock figures (run time, latency percentiles), which live under its `timings` key.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crops.evaluate.abstats import COUNTS, METRICS, add_user_tables, analyze, user_table
from crops.evaluate.canary import CanaryPolicy, decide
from crops.schema import SEARCH_LOG
from crops.serve.process import ServerProcessError, start_server, stop_server, wait_for_url
from crops.world.online import EndpointStats, HttpRetriever, OnlineRun, run_online
from crops.world.world import World

Progress = Callable[[str, int, int], None]
ARMS: tuple[str, str] = ("control", "treatment")
REPORT_VERSION = 1


class AbTestError(ValueError):
    """Bad input found before any traffic is sent (not a world, not a model, endpoint down)."""


class AbTestConfig(BaseModel):
    """One A/B test: the world, the two arms, the split, the looks and the canary policy."""

    model_config = ConfigDict(extra="forbid")

    world: Path
    control: str = Field(description="URL of a KServe v1 endpoint, or a model folder")
    treatment: str = Field(description="URL of a KServe v1 endpoint, or a model folder")
    control_index: Path | None = Field(None, description="index for a model-folder control")
    treatment_index: Path | None = Field(None, description="index for a model-folder treatment")
    treatment_share: float = Field(0.1, gt=0.0, lt=1.0)
    users: int | None = Field(None, ge=2, description="a seeded sample of the world's users")
    days: int = Field(5, ge=1, description="simulated days; one sequential look after each")
    searches_per_user: float = Field(1.0, gt=0.0, description="mean searches per user per day")
    seed: int = 0
    salt: str = Field("crops-abtest", min_length=1, description="salt of the assignment hash")
    timeout_s: float = Field(2.0, gt=0.0, description="per-request endpoint timeout")
    concurrency: int = Field(8, ge=1, description="requests in flight per arm")
    model_name: str = Field("crops", description="model name in /v1/models/NAME:predict")
    server_start_s: float = Field(180.0, gt=0.0, description="wait this long for a server")
    policy: CanaryPolicy = Field(default_factory=CanaryPolicy)
    out: Path

    @model_validator(mode="after")
    def _looks_are_days(self) -> AbTestConfig:
        """One look per simulated day: the policy's planned looks are the days."""
        if self.policy.looks != self.days:
            self.policy = CanaryPolicy.model_validate(
                {**self.policy.model_dump(), "looks": self.days}
            )
        return self

    @field_validator("control", "treatment")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give a URL or a model folder")
        return value.strip()


# --------------------------------------------------------------------------- assignment


def assignment_hash(user_id: int, salt: str) -> float:
    """A user's stable position in [0, 1): the first 64 bits of sha256("salt:user_id")."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def assign(user_ids: np.ndarray, share: float, salt: str) -> np.ndarray:
    """True where the user is in the treatment arm; the same ids and salt always split alike."""
    return np.array([assignment_hash(int(u), salt) < share for u in user_ids], dtype=bool)


# --------------------------------------------------------------------------- arms


def _is_url(value: str) -> bool:
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _probe(url: str, model_name: str, timeout_s: float, attempts: int = 3) -> None:
    """Refuse an endpoint that is down before traffic starts (a readiness endpoint answers 200)."""
    parts = urllib.parse.urlsplit(url)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    base = parts.path.rstrip("/")
    last = "no answer"
    for attempt in range(attempts):
        for path in ("/v2/health/ready", f"/v1/models/{model_name}"):
            conn = conn_cls(parts.hostname, parts.port, timeout=max(timeout_s, 1.0))
            try:
                conn.request("GET", base + path)
                status = conn.getresponse().status
                if status == 200:
                    return
                last = f"GET {path} answered HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
        if attempt + 1 < attempts:
            time.sleep(0.5)
    raise AbTestError(f"endpoint {url} is not reachable or not ready ({last})")


@dataclass
class Arm:
    """A resolved arm: where its traffic goes and where that endpoint came from."""

    name: str
    url: str
    source: Literal["url", "model"]
    model_dir: str | None = None
    index_dir: str | None = None
    model_hash: str | None = None

    def describe(self) -> dict[str, Any]:
        """The arm for the report: stable across reruns (a local server's port is not)."""
        out: dict[str, Any] = {"source": self.source}
        if self.source == "url":
            out["url"] = self.url
        else:
            out |= {"model_dir": self.model_dir, "index": self.index_dir}
            out["model_hash"] = self.model_hash
        return out


def _check_model_dir(path: Path, arm: str) -> None:
    from crops.model.encoders import MANIFEST

    if not path.is_dir():
        raise AbTestError(f"--{arm} {path}: neither an http(s) URL nor an existing model folder")
    if not (path / MANIFEST).is_file():
        raise AbTestError(f"--{arm} {path}: not a CroPS model folder (no {MANIFEST})")


def resolve_arms(cfg: AbTestConfig, stack: ExitStack, progress: Progress | None) -> list[Arm]:
    """Check both arms, then build indexes and start servers; all before any traffic."""
    from crops.index.build import build_exact_index
    from crops.index.store import model_hash

    specs = {
        "control": (cfg.control, cfg.control_index),
        "treatment": (cfg.treatment, cfg.treatment_index),
    }
    for name, (target, index) in specs.items():  # cheap checks first: fail fast
        if _is_url(target):
            if index is not None:
                raise AbTestError(f"--{name}-index goes with a model folder, not a URL")
            _probe(target, cfg.model_name, cfg.timeout_s)
        else:
            _check_model_dir(Path(target), name)
            if index is not None and not (Path(index) / "manifest.json").is_file():
                raise AbTestError(f"--{name}-index {index}: not a CroPS index folder")
    arms: dict[str, Arm] = {}
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    for name, (target, index) in specs.items():
        if _is_url(target):
            arms[name] = Arm(name, target.rstrip("/"), "url")
            continue
        model_dir = Path(target)
        if index is None:
            if progress:
                progress(f"index {name}", 0, 1)
            videos = Path(cfg.world) / "videos.parquet"
            index = build_exact_index(model_dir, videos, cfg.out / "indexes" / name)
            if progress:
                progress(f"index {name}", 1, 1)
        log = cfg.out / "logs" / name / "server.log"
        args = ["--model", model_dir, "--index", index, "--port", "0", "--host", "127.0.0.1"]
        proc = start_server([*args, "--name", cfg.model_name], log)
        stack.callback(stop_server, proc)
        started[name] = proc, log
        arms[name] = Arm(name, "", "model", str(model_dir), str(index), model_hash(model_dir))
    for i, (name, (proc, log)) in enumerate(started.items()):  # both start at once
        if progress:
            progress("servers", i, len(started))
        try:
            arms[name].url = wait_for_url(proc, log, cfg.server_start_s)
        except ServerProcessError as exc:
            raise AbTestError(str(exc)) from exc
    if progress and started:
        progress("servers", len(started), len(started))
    return [arms[name] for name in ARMS]


# --------------------------------------------------------------------------- traffic


@dataclass
class ArmState:
    """One arm's running state: the next free ids (unique across days) and endpoint totals."""

    total: EndpointStats = field(default_factory=EndpointStats)
    next_request: int = 0
    next_session: int = 0

    def add(self, run: OnlineRun | None, stats: EndpointStats) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Append a day: shift its ids past the previous days' and fold in the endpoint stats."""
        self.total.requests += stats.requests
        self.total.errors += stats.errors
        self.total.latencies_ms.extend(stats.latencies_ms)
        self.total.last_error = stats.last_error or self.total.last_error
        if run is None:
            search = pl.from_arrow(SEARCH_LOG.empty_table())
            requests = pl.DataFrame(schema=_REQUEST_SCHEMA)
        else:
            r, s = self.next_request, self.next_session
            search = pl.from_arrow(run.search_log).with_columns(
                pl.col("request_id") + r, pl.col("session_id") + s
            )
            requests = (
                pl.from_arrow(run.requests)
                .select(list(_REQUEST_SCHEMA))
                .with_columns(pl.col("request_id") + r, pl.col("session_id") + s)
                .cast(_REQUEST_SCHEMA)
            )
            if requests.height:
                self.next_request = int(requests["request_id"].max()) + 1
                self.next_session = int(requests["session_id"].max()) + 1
        return search, requests


_REQUEST_SCHEMA = {
    "request_id": pl.Int64,
    "session_id": pl.Int64,
    "user_id": pl.Int64,
    "ts": pl.Datetime("ms", "UTC"),
    "query": pl.String,
}


def _serve_day(
    world: World, url: str, rows: np.ndarray, day: int, cfg: AbTestConfig
) -> tuple[OnlineRun | None, EndpointStats]:
    """A day of one arm's users through its endpoint; (None, stats) when none of them searched."""
    retriever = HttpRetriever(url, cfg.model_name, cfg.timeout_s, cfg.concurrency)
    if len(rows) == 0:
        return None, retriever.stats
    try:
        run = run_online(
            world,
            retriever,
            users=rows,
            day=day,
            seed=cfg.seed,
            searches_per_user=cfg.searches_per_user,
        )
    except ValueError as exc:
        if "no traffic" not in str(exc):
            raise
        return None, retriever.stats
    return run, retriever.stats


def _write_logs(
    out: Path, arm: str, look: int, search: pl.DataFrame, requests: pl.DataFrame
) -> None:
    folder = out / "logs" / arm / f"day={look}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(search.to_arrow().cast(SEARCH_LOG), folder / "search_log.parquet")
    pq.write_table(requests.to_arrow(), folder / "requests.parquet")


def guardrail_counts(stats: EndpointStats) -> dict[str, Any]:
    """The deterministic part of an arm's guardrails: requests, errors, error rate."""
    d = stats.as_dict()
    return {k: d[k] for k in ("requests", "errors", "error_rate")}


def latency(stats: EndpointStats) -> dict[str, float]:
    d = stats.as_dict()
    return {"p50_ms": round(d["p50_ms"], 3), "p99_ms": round(d["p99_ms"], 3)}


# --------------------------------------------------------------------------- the job


def _sample_users(world: World, n: int | None, seed: int) -> np.ndarray:
    """Row indices of the users in the test: all, or a seeded sample of `n` (sorted)."""
    total = len(world.users)
    if n is None or n >= total:
        return np.arange(total)
    rng = np.random.default_rng([seed, 1_7])
    return np.sort(rng.choice(total, size=n, replace=False))


def _look_record(
    look: int, day: int, analysis: dict, guardrails: dict, day_guardrails: dict, decision: dict
) -> dict[str, Any]:
    """What one look saw: per metric each arm's value and interval, the lift; SRM; decision."""
    metrics = {}
    for m in METRICS:
        lift = analysis["metrics"][m]
        row: dict[str, Any] = {}
        for arm in ARMS:
            s = analysis["arms"][arm]["metrics"][m]
            row[arm] = {k: s[k] for k in ("value", "ci_low", "ci_high", "users", "status")}
        row["lift"] = {
            k: lift.get(k) for k in ("lift", "lift_ci_low", "lift_ci_high", "p_value", "status")
        }
        metrics[m] = row
    return {
        "look": look,
        "day": day,
        "users": {arm: analysis["arms"][arm]["users"] for arm in ARMS},
        "metrics": metrics,
        "srm": analysis["srm"],
        "guardrails": guardrails,
        "guardrails_this_day": day_guardrails,
        "decision": decision,
    }


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"cannot read a decision of type {type(obj).__name__}")


def run_abtest(cfg: AbTestConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the test, write R/ab_report.json, R/report.md and the plots; return the report.

    Raises `AbTestError` for bad input before any traffic; once traffic flows, endpoint
    failures are data (guardrails), not exceptions.
    """
    started = time.perf_counter()
    world_dir = Path(cfg.world)
    if not (world_dir / "world.json").is_file():
        raise AbTestError(f"--world {world_dir}: not a simulated world (no world.json)")
    world = World.load(world_dir)
    rows = _sample_users(world, cfg.users, cfg.seed)
    treated = assign(rows + 1, cfg.treatment_share, cfg.salt)  # user_id = row + 1
    arm_rows = {"control": rows[~treated], "treatment": rows[treated]}
    for arm, r in arm_rows.items():
        if len(r) == 0:
            raise AbTestError(
                f"the {arm} arm gets no users ({len(rows)} users at treatment share "
                f"{cfg.treatment_share}); use more users or a share nearer 0.5"
            )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted((out / "logs").glob("*/day=*")):  # a rerun may stop at another look
        shutil.rmtree(stale)
    history: list[dict[str, Any]] = []
    latency_history: list[dict[str, Any]] = []
    tables: list[pl.DataFrame] = []
    logs = {arm: ArmState() for arm in ARMS}
    window_s, long_play_ms = world.cfg.reformulation_window_s, world.cfg.long_play_ms
    with ExitStack() as stack:
        arms = {a.name: a for a in resolve_arms(cfg, stack, progress)}
        ready = time.perf_counter()
        for look in range(1, cfg.days + 1):
            day = world.cfg.days + look  # the days after the test day: new traffic
            today: dict[str, EndpointStats] = {}
            for arm in ARMS:
                run, stats = _serve_day(world, arms[arm].url, arm_rows[arm], day, cfg)
                today[arm] = stats
                search, requests = logs[arm].add(run, stats)
                _write_logs(out, arm, look, search, requests)
                if requests.height:
                    t = user_table(search, requests, window_s=window_s, long_play_ms=long_play_ms)
                    tables.append(t.with_columns(pl.lit(arm).alias("arm")))
            users = add_user_tables(*tables) if tables else _empty_users()
            analysis = analyze(
                users, alpha=cfg.policy.alpha, expected_treatment_share=cfg.treatment_share
            )
            guardrails = {arm: guardrail_counts(logs[arm].total) for arm in ARMS}
            for_decision = {
                arm: {**guardrails[arm], "p99_ms": latency(logs[arm].total)["p99_ms"]}
                for arm in ARMS
            }
            decision = _as_dict(
                decide(
                    analysis,
                    for_decision,
                    look=look,
                    information_fraction=look / cfg.days,
                    history=[j / cfg.days for j in range(1, look)],
                    policy=cfg.policy,
                )
            )
            history.append(
                _look_record(
                    look,
                    day,
                    analysis,
                    guardrails,
                    {arm: guardrail_counts(today[arm]) for arm in ARMS},
                    decision,
                )
            )
            latency_history.append(
                {
                    "look": look,
                    "cumulative": {arm: latency(logs[arm].total) for arm in ARMS},
                    "this_day": {arm: latency(today[arm]) for arm in ARMS},
                }
            )
            if progress:
                progress("looks", look, cfg.days)
            if decision["action"] in ("promote", "rollback"):
                break  # sequential: the policy spent its alpha on this look
        traffic_s = time.perf_counter() - ready
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "config": cfg.model_dump(mode="json", exclude={"policy"}),
        "policy": cfg.policy.model_dump(mode="json"),
        "world": {
            "dir": str(world_dir),
            "fingerprint": world.fingerprint(),
            "seed": world.cfg.seed,
        },
        "arms": {name: arm.describe() for name, arm in arms.items()},
        "assignment": {
            "salt": cfg.salt,
            "treatment_share": cfg.treatment_share,
            "users": len(rows),
            "assigned": {arm: len(r) for arm, r in arm_rows.items()},
            "observed_treatment_share": float(treated.mean()),
        },
        "looks_planned": cfg.days,
        "looks_run": len(history),
        "stopped_early": len(history) < cfg.days,
        "history": history,
        "analysis": analysis,
        "guardrails": guardrails,
        "decision": history[-1]["decision"],
        "outputs": {
            "report_md": "report.md",
            "metrics_plot": "metrics_over_time.png",
            "lift_plot": "lift_over_time.png",
            "logs": "logs/<arm>/day=<look>/{search_log,requests}.parquet",
        },
    }
    report["timings"] = {
        "setup_s": round(ready - started, 3),
        "traffic_s": round(traffic_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
        "latency_ms": latency_history[-1]["cumulative"],
        "latency_history": latency_history,
    }
    (out / "ab_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_history(report, out)
    return report


def _empty_users() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"user_id": pl.Int64, "arm": pl.String, **dict.fromkeys(COUNTS, pl.Int64)}
    )


# --------------------------------------------------------------------------- outputs


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _ci(lo: float | None, hi: float | None, fmt: Callable[[float | None], str] = _pct) -> str:
    return "n/a" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def held_report(reason: str, days: int, policy: CanaryPolicy | None = None) -> dict[str, Any]:
    """The report of a test that did not run because the rollout held the candidate back (the
    offline gate): decision hold, no looks, no traffic; `held_by` says who held it."""
    policy = policy or CanaryPolicy()
    return {
        "report_version": REPORT_VERSION,
        "held_by": "deploy",
        "policy": policy.model_dump(mode="json"),
        "looks_planned": days,
        "looks_run": 0,
        "stopped_early": False,
        "history": [],
        "analysis": {"metrics": {}},
        "decision": {
            "action": "hold",
            "reasons": [f"no A/B test: the candidate was not deployed ({reason})"],
        },
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: arms, users, per metric values, lifts, guardrails, SRM, decision."""
    if report.get("held_by"):
        lines = ["# Online A/B test", "", "**Decision: HOLD**, no look run", ""]
        lines += [f"- {r}" for r in report["decision"]["reasons"]]
        return "\n".join([*lines, ""])
    a, dec, assign_ = report["analysis"], report["decision"], report["assignment"]
    conf = f"{100 * a['confidence']:.0f}%"
    lines = [
        "# Online A/B test",
        "",
        f"**Decision: {dec['action'].upper()}** after look {report['looks_run']} of "
        f"{report['looks_planned']}" + (" (stopped early)" if report["stopped_early"] else ""),
        "",
    ]
    lines += [f"- {r}" for r in dec.get("reasons", [])]
    lines += ["", "## Arms", "", "| arm | source | endpoint |", "|---|---|---|"]
    for name, arm in report["arms"].items():
        where = arm.get("url") or f"model `{arm['model_dir']}`, index `{arm['index']}`"
        lines.append(f"| {name} | {arm['source']} | {where} |")
    lines += [
        "",
        f"World `{report['world']['dir']}` (fingerprint `{report['world']['fingerprint'][:12]}`); "
        f"{assign_['users']} users, assigned by sha256(salt:user_id) with salt "
        f"`{assign_['salt']}`: {assign_['assigned']['control']} control, "
        f"{assign_['assigned']['treatment']} treatment (planned treatment share "
        f"{assign_['treatment_share']:.3f}, assigned {assign_['observed_treatment_share']:.3f}).",
        "",
        f"## Metrics (cumulative, {conf} intervals, delta method on user-level sums)",
        "",
        "| metric | control | control CI | treatment | treatment CI | lift | lift CI | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, lift in a["metrics"].items():
        c, t = a["arms"]["control"]["metrics"][m], a["arms"]["treatment"]["metrics"][m]
        lines.append(
            f"| {m} | {_pct(c['value'])} | {_ci(c['ci_low'], c['ci_high'])} | "
            f"{_pct(t['value'])} | {_ci(t['ci_low'], t['ci_high'])} | {_signed(lift['lift'])} | "
            f"{_ci(lift['lift_ci_low'], lift['lift_ci_high'], _signed)} | {_p(lift['p_value'])} |"
        )
    lines += [
        "",
        f"Intervals and p-values are fixed-horizon at alpha {a['alpha']}; the decision compares "
        f"the primary metric with the look's sequential level (nominal p < "
        f"{_p(dec.get('nominal_alpha'))}).",
        "",
        "Active users (searched at least once): "
        + ", ".join(f"{arm} {a['arms'][arm]['users']}" for arm in ARMS)
        + ".",
        "",
        "## Guardrails (endpoint)",
        "",
        "| arm | requests | errors | error rate | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    lat = report.get("timings", {}).get("latency_ms", {})
    for arm, g in report["guardrails"].items():
        la = lat.get(arm, {})
        lines.append(
            f"| {arm} | {g['requests']} | {g['errors']} | {_pct(g['error_rate'])} | "
            f"{la.get('p50_ms', float('nan')):.1f} | {la.get('p99_ms', float('nan')):.1f} |"
        )
    srm = a["srm"]
    lines += [
        "",
        "## Sample ratio",
        "",
        f"Active users: {srm['control_users']} control, {srm['treatment_users']} treatment; "
        f"expected treatment share {srm['expected_treatment_share']:.3f}, observed "
        f"{_pct(srm['observed_treatment_share'], 1)}; chi-square p = {_p(srm['p_value'])}"
        + (" — **mismatch**" if srm["flagged"] else " (no mismatch)")
        + ".",
        "",
        "## Looks",
        "",
        "| look | day | users (c/t) | "
        + " | ".join(f"{m} lift" for m in a["metrics"])
        + " | decision |",
        "|---|---|---|" + "---|" * len(a["metrics"]) + "---|",
    ]
    for h in report["history"]:
        lifts = " | ".join(
            f"{_signed(row['lift']['lift'])} (p {_p(row['lift']['p_value'])})"
            for row in h["metrics"].values()
        )
        users = f"{h['users']['control']}/{h['users']['treatment']}"
        lines.append(
            f"| {h['look']} | {h['day']} | {users} | {lifts} | {h['decision']['action']} |"
        )
    lines += [
        "",
        "Plots: `metrics_over_time.png` (each metric per arm, with intervals) and "
        "`lift_over_time.png` (lifts with intervals and the zero line).",
        "",
    ]
    return "\n".join(lines)


def plot_history(report: dict[str, Any], out: Path) -> None:
    """metrics_over_time.png and lift_over_time.png: one panel per metric, intervals as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history, names = report["history"], list(METRICS)
    looks = [h["look"] for h in history]

    def series(get) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vals = [get(h) for h in history]
        return tuple(
            np.array([np.nan if v[i] is None else v[i] for v in vals], dtype=float)
            for i in range(3)
        )

    colors = {"control": "tab:blue", "treatment": "tab:orange"}
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        for arm in ARMS:
            v, lo, hi = series(
                lambda h, arm=arm, m=m: tuple(
                    h["metrics"][m][arm][k] for k in ("value", "ci_low", "ci_high")
                )
            )
            ax.plot(looks, v, marker="o", color=colors[arm], label=arm)
            ax.fill_between(looks, lo, hi, color=colors[arm], alpha=0.2)
        ax.set(title=m, xlabel="look (day)", ylabel="rate")
        ax.set_xticks(looks)
        ax.legend()
    fig.suptitle("Metrics per arm over the looks (cumulative, with intervals)")
    fig.tight_layout()
    fig.savefig(out / "metrics_over_time.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        v, lo, hi = series(
            lambda h, m=m: tuple(
                h["metrics"][m]["lift"][k] for k in ("lift", "lift_ci_low", "lift_ci_high")
            )
        )
        ax.plot(looks, 100 * v, marker="o", color="tab:green")
        ax.fill_between(looks, 100 * lo, 100 * hi, color="tab:green", alpha=0.2)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set(title=f"{m} lift", xlabel="look (day)", ylabel="treatment vs control (%)")
        ax.set_xticks(looks)
    fig.suptitle("Relative lift over the looks (with intervals)")
    fig.tight_layout()
    fig.savefig(out / "lift_over_time.png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- applying it


def apply_decision(
    decision: Any,
    *,
    isvc: str,
    namespace: str,
    client: Any = None,
    mode: str = "auto",
) -> dict[str, Any]:
    """Apply a canary decision to the KServe InferenceService `namespace/isvc`.

    promote -> the canary becomes the only predictor; rollback -> all traffic back to the
    previous predictor and the canary dropped; hold -> nothing changes (the canary keeps its
    share for the next run). `client` is a kubernetes ApiClient (default: in-cluster, else the
    local kubeconfig); `mode` Standard | Serverless | auto (read off the object).

    Returns `{action, isvc, namespace, patched, canary_traffic_percent}`; a promote or rollback
    with no canary to act on changes nothing and is no failure: `patched` False and `noop`
    saying why. Raises `crops.k8s.client.KubeError` naming the object and the API's reason
    (a missing object, a refused call, a concurrent change: HTTP 409).
    """
    from crops.k8s.inference_service import InferenceServiceClient, canary_percent

    action = _as_dict(decision)["action"]
    if action not in ("promote", "rollback", "hold"):
        raise ValueError(f"unknown decision action {action!r}")
    isvcs = InferenceServiceClient(client, mode=mode)
    result: dict[str, Any] = {"action": action, "isvc": isvc, "namespace": namespace}
    if action == "hold":
        obj = isvcs.get(isvc, namespace)
        return {**result, "patched": False, "canary_traffic_percent": canary_percent(obj)}
    change = (
        isvcs.promote(isvc, namespace) if action == "promote" else isvcs.rollback(isvc, namespace)
    )
    result |= {
        "patched": change["patched"],
        "canary_traffic_percent": canary_percent(change["object"]),
    }
    if not change["patched"]:
        result["noop"] = change["noop"]
    return result


__all__ = [
    "AbTestConfig",
    "AbTestError",
    "apply_decision",
    "assign",
    "assignment_hash",
    "held_report",
    "render_markdown",
    "run_abtest",
]
