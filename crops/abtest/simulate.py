"""`crops abtest --world W ...`: simulated users as a log source, then the same analysis.

Simulated users of a world search the two arms (URLs, or model folders served here) for
`days` days, split by a salted hash of their id (`crops.abtest.traffic.assign`), so a user
stays in one arm. Each day's logs go to ``R/logs`` in the layout real logs use
(`crops.abtest.layout`), and after each day `crops.abtest.analyze` takes that day's look from
the logs, through the ledger, exactly as the CronJob would the morning after: the decision
reads the logs, never the simulator. The test stops at the first promote or rollback.
`crops abtest analyze --logs R/logs --out R2` gives the same numbers and decision.

A rerun with the same seed and inputs writes the same ledger and `ab_report.json`, apart from
the wall-clock figures under its `timings` key; the request log's latencies are measured, so
the p50/p99 guardrail figures vary from run to run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crops.abtest.analyze import AnalyzeConfig, AnalyzeError, analyze_logs
from crops.abtest.arms import AbTestError, resolve_arms
from crops.abtest.layout import ARMS, DAY, day_start
from crops.abtest.report import write_report
from crops.abtest.traffic import assign, log_day, serve_day, write_day
from crops.evaluate.sequential import CanaryPolicy
from crops.world.world import World

Progress = Callable[[str, int, int], None]
SETTLE_S = 3600.0  # each look is taken an hour after its day ends, as the CronJob would


class AbTestConfig(BaseModel):
    """One simulated A/B test: the world, the two arms, the split, the looks, the policy."""

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
    ledger: str | None = Field(None, description="ledger folder (default: OUT/ledger, fresh)")
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


def _sample_users(world: World, n: int | None, seed: int) -> np.ndarray:
    """Row indices of the users in the test: all, or a seeded sample of `n` (sorted)."""
    total = len(world.users)
    if n is None or n >= total:
        return np.arange(total)
    rng = np.random.default_rng([seed, 1_7])
    return np.sort(rng.choice(total, size=n, replace=False))


def run_abtest(cfg: AbTestConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Send the traffic, analyse each day from the logs, write the report; return it.

    Raises `AbTestError` for bad input before any traffic; once traffic flows, endpoint
    failures are data (the request log's statuses feed the guardrails), not exceptions.
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
    logs = out / "logs"
    stale = [logs] + ([out / "ledger"] if cfg.ledger is None else [])
    for path in stale:  # a fresh simulated test: a rerun must not meet the last run's looks
        shutil.rmtree(path, ignore_errors=True)
    specs = {
        "control": (cfg.control, cfg.control_index),
        "treatment": (cfg.treatment, cfg.treatment_index),
    }
    analyze_cfg = AnalyzeConfig(
        logs=str(logs),
        out=out,
        ledger=cfg.ledger,
        treatment_share=cfg.treatment_share,
        policy=cfg.policy,
        reformulation_window_s=world.cfg.reformulation_window_s,
        long_play_ms=world.cfg.long_play_ms,
        settle_s=SETTLE_S,
    )
    report: dict[str, Any] = {}
    next_request = next_session = 0
    with ExitStack() as stack:
        arms = {
            a.name: a
            for a in resolve_arms(
                specs,
                world=world_dir,
                out=out,
                model_name=cfg.model_name,
                timeout_s=cfg.timeout_s,
                server_start_s=cfg.server_start_s,
                stack=stack,
                progress=progress,
            )
        }
        ready = time.perf_counter()
        for look in range(1, cfg.days + 1):
            day = world.cfg.days + look  # the days after the test day: new traffic
            for arm in ARMS:
                traffic = serve_day(
                    world,
                    arm,
                    arms[arm].url,
                    arm_rows[arm],
                    day,
                    seed=cfg.seed,
                    searches_per_user=cfg.searches_per_user,
                    model_name=cfg.model_name,
                    timeout_s=cfg.timeout_s,
                    concurrency=cfg.concurrency,
                    request_id_base=next_request,
                    session_id_base=next_session,
                )
                next_request, next_session = traffic.next_request_id, traffic.next_session_id
                write_day(logs, log_day(day), arm, traffic)
            as_of = day_start(log_day(day)) + DAY + timedelta(seconds=SETTLE_S)
            try:
                cfg_k = analyze_cfg.model_copy(update={"as_of": as_of})
                report = analyze_logs(cfg_k, source="simulated", plots=False)
            except AnalyzeError as exc:
                raise AbTestError(f"the simulated logs cannot be analysed: {exc}") from exc
            if progress:
                progress("looks", look, cfg.days)
            if report["finished"]:
                break  # sequential: the policy spent its alpha on this look
        traffic_s = time.perf_counter() - ready
    report["source"] = "simulated"
    report["config"] = cfg.model_dump(mode="json", exclude={"policy"})
    report["world"] = {
        "dir": str(world_dir),
        "fingerprint": world.fingerprint(),
        "seed": world.cfg.seed,
    }
    report["arms"] = {name: arm.describe() for name, arm in arms.items()}
    report["assignment"] = {
        "salt": cfg.salt,
        "treatment_share": cfg.treatment_share,
        "users": len(rows),
        "assigned": {arm: len(r) for arm, r in arm_rows.items()},
        "observed_treatment_share": float(treated.mean()),
    }
    report["timings"] = {
        "setup_s": round(ready - started, 3),
        "traffic_s": round(traffic_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
    }
    write_report(report, out)
    return report


__all__ = ["AbTestConfig", "AbTestError", "run_abtest"]
