"""Benchmark: `crops abtest analyze` on 10 million logged impressions against a plain DuckDB query.

Synthetic A/A logs (`crops.abtest.synthlogs`: 5 days, 8 shown impressions per request, a few
503s and duplicated search rows) of ``--impressions`` shown rows are written once into a temp
folder. Then, in the same run and alternating the order, each of these runs ``--repeats`` times,
each in its own child process (time of the call itself, peak RSS of the whole child from
``VmHWM``):

- ``analyze 5 looks``: `analyze_logs` with a fresh ledger and the analysis time an hour after
  the last day, so it reads and validates every row and takes all five cumulative looks
  (plots and quarantine written, as the CLI does);
- ``analyze look 5``: the CronJob's daily cost, `analyze_logs` with a ledger that already holds
  looks 1-4 (a fresh copy each run), so it reads and validates every row and takes look 5 over
  all of the data;
- ``duckdb reference``: one plain DuckDB SQL query over the same parquet files computing the
  per-arm sums one look needs: impressions, clicks and long plays (clicked and watch_ms >=
  least(duration_ms, 18000)) of the search log's shown rows, and requests and reformulations
  (the user's next request, by ts, within 90 s and with another query) of the request log.

Times are the median of the repeats, peaks the largest; ratios are analyze / reference (goal:
the daily look no slower than the query). The per-arm sums of both are printed side by side:
they differ by the rows the analysis quarantines (duplicates) and how it counts requests (the
search log's plus the request log's that never reached it).

    python bench/bench_abtest_analyze.py                      # 10 M impressions, 3 repeats
    python bench/bench_abtest_analyze.py --impressions 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

DAYS = 5
TABLES = ("search_log", "request_log")
K = 8  # shown impressions per request
ERROR_RATE = 0.002
DUPLICATE_SHARE = 0.0005
REQUESTS_PER_USER_DAY = 1.6  # synthlogs: 1 + Poisson(0.6) requests per active user-day
USER_DAYS_PER_USER = 2.0  # synthlogs over 5 days: arrival day + half of the later days
REFERENCE_SQL = """
WITH s AS (
  SELECT arm,
         count(*) AS impressions,
         count(*) FILTER (WHERE clicked) AS clicks,
         count(*) FILTER (WHERE clicked AND watch_ms >= least(duration_ms, {long_ms}))
           AS long_plays
  FROM read_parquet('{logs}/search_log/*/*.parquet')
  WHERE stage = 'shown'
  GROUP BY arm
), r AS (
  SELECT CASE model_hash WHEN '{control}' THEN 'control' WHEN '{candidate}' THEN 'treatment'
         END AS arm,
         user_id, ts, query,
         lead(user_id) OVER w AS n_user, lead(ts) OVER w AS n_ts, lead(query) OVER w AS n_query
  FROM read_parquet('{logs}/request_log/*/*.parquet')
  WHERE instance = 0 AND user_id IS NOT NULL
  WINDOW w AS (PARTITION BY user_id ORDER BY ts)
), rs AS (
  SELECT arm, count(*) AS requests,
         count(*) FILTER (WHERE n_ts - ts <= INTERVAL {window_s} SECOND AND n_query <> query)
           AS reformulated
  FROM r GROUP BY arm
)
SELECT s.arm, impressions, clicks, long_plays, requests, reformulated
FROM s JOIN rs USING (arm) ORDER BY s.arm
"""


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def as_of(days_done: int):
    """An hour after the experiment's `days_done`-th day ends: when the CronJob runs."""
    from crops.abtest.layout import day_start
    from crops.abtest.synthlogs import SynthSpec

    return day_start(SynthSpec().start) + timedelta(days=days_done, hours=1)


def analyze_config(logs: Path, out: Path, ledger: Path, days_done: int):
    from crops.abtest.analyze import AnalyzeConfig

    return AnalyzeConfig(
        logs=str(logs), out=out, ledger=str(ledger), treatment_share=0.5, as_of=as_of(days_done)
    )


def child_analyze(logs: Path, work: Path, ledger_from: str | None) -> dict:
    from crops.abtest.analyze import analyze_logs

    ledger = work / "ledger"
    if ledger_from:
        shutil.copytree(ledger_from, ledger)
    cfg = analyze_config(logs, work / "report", ledger, DAYS)
    t0 = time.perf_counter()
    report = analyze_logs(cfg, plots=True)
    seconds = time.perf_counter() - t0
    arms = report["analysis"]["arms"]
    sums = []
    for arm in ("control", "treatment"):
        m = arms[arm]["metrics"]
        sums.append(
            {
                "arm": arm,
                "impressions": m["ctr"]["denominator"],
                "clicks": m["ctr"]["numerator"],
                "long_plays": m["long_play_rate"]["numerator"],
                "requests": m["reformulation_rate"]["denominator"],
                "reformulated": m["reformulation_rate"]["numerator"],
            }
        )
    return {
        "seconds": seconds,
        "looks_taken": report["looks_taken_now"],
        "looks_run": report["looks_run"],
        "action": report["decision"]["action"],
        "timings": report["timings"],
        "quarantined": {k: report["hygiene"][k]["quarantined"] for k in TABLES},
        "sums": sums,
    }


def child_reference(logs: Path, work: Path, _: str | None) -> dict:
    import duckdb

    from crops.abtest.synthlogs import HASHES
    from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S

    sql = REFERENCE_SQL.format(
        logs=logs,
        control=HASHES["control"],
        candidate=HASHES["treatment"],
        long_ms=LONG_PLAY_MS,
        window_s=REFORMULATION_WINDOW_S,
    )
    con = duckdb.connect()
    t0 = time.perf_counter()
    cur = con.execute(sql)
    rows = cur.fetchall()
    seconds = time.perf_counter() - t0
    names = [d[0] for d in cur.description]
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return {
        "seconds": seconds,
        "threads": threads,
        "sums": [dict(zip(names, r, strict=True)) for r in rows],
    }


CHILDREN = {"analyze": child_analyze, "reference": child_reference}


def run_child(kind: str, logs: Path, work: Path, ledger_from: Path | None = None) -> dict:
    """One measurement in a fresh process: its figures plus the child's peak RSS."""
    work.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", kind, "--logs", str(logs), "--work", str(work)]
    if ledger_from is not None:
        cmd += ["--ledger-from", str(ledger_from)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{kind} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    return result


def generate(logs: Path, impressions: int, seed: int) -> tuple[dict, float, int]:
    from crops.abtest.synthlogs import SynthSpec, write_logs

    per_user = USER_DAYS_PER_USER * REQUESTS_PER_USER_DAY * K * (1 - ERROR_RATE)
    per_user *= 1 + DUPLICATE_SHARE
    users = round(impressions / per_user)
    spec = SynthSpec(
        users=users,
        days=DAYS,
        treatment_share=0.5,
        impressions_per_request=K,
        seed=seed,
        error_rate=ERROR_RATE,
        duplicate_share=DUPLICATE_SHARE,
    )
    t0 = time.perf_counter()
    counts = write_logs(spec, logs)
    return counts, time.perf_counter() - t0, users


def sums_line(sums: list[dict]) -> str:
    cols = ("impressions", "clicks", "long_plays", "requests", "reformulated")
    return "  ".join(f"{s['arm']}: " + " ".join(f"{c} {s[c]:,}" for c in cols) for s in sums)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impressions", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--logs", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ledger-from", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = CHILDREN[args.child](args.logs, args.work, args.ledger_from)
        result["peak_rss_mib"] = vm_hwm_mib()
        print(json.dumps(result))
        return

    own_work = args.work is None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-abtest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        figures = bench(args, work)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


def bench(args: argparse.Namespace, work: Path) -> dict:
    logs = work / "logs"
    counts, gen_s, users = generate(logs, args.impressions, args.seed)
    size = sum(p.stat().st_size for p in logs.rglob("*.parquet")) / 2**20
    print(
        f"synthetic A/A logs: {users:,} users, {DAYS} days, {counts['search_log']:,} search_log"
        f" rows, {counts['request_log']:,} request_log rows, {size:.0f} MiB parquet;"
        f" generated in {gen_s:.1f} s ({counts['search_log'] / gen_s / 1e6:.2f} M rows/s)"
    )

    # a ledger holding looks 1-4, copied afresh for each daily-look run
    from crops.abtest.analyze import analyze_logs

    seeded = work / "ledger-4"
    t0 = time.perf_counter()
    first4 = analyze_logs(analyze_config(logs, work / "seed-report", seeded, DAYS - 1), plots=False)
    print(
        f"ledger with looks {first4['looks_taken_now']} prepared in"
        f" {time.perf_counter() - t0:.1f} s (not measured)"
    )

    runs = {
        "analyze 5 looks": ("analyze", None),
        "analyze look 5": ("analyze", seeded),
        "duckdb reference": ("reference", None),
    }
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(args.repeats):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            kind, ledger_from = runs[name]
            scratch = work / f"run-{rep}-{kind}-{len(results[name])}-{time.monotonic_ns()}"
            results[name].append(run_child(kind, logs, scratch, ledger_from))

    summary = {}
    for name, rs in results.items():
        summary[name] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "seconds_all": [round(r["seconds"], 3) for r in rs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "last": rs[-1],
        }
    ref = summary["duckdb reference"]
    print(
        f"{args.repeats} runs each, alternating order, each in a fresh child process;"
        f" {os.cpu_count()} cores shared, duckdb threads {ref['last']['threads']}"
    )
    for name, s in summary.items():
        extra = ""
        if name != "duckdb reference":
            last = s["last"]
            extra = (
                f"  looks {last['looks_taken']} -> {last['action']}"
                f"  (read+validate {last['timings']['read_s']:.2f} s)"
            )
            s["time_ratio"] = s["seconds"] / ref["seconds"]
            s["rss_ratio"] = s["peak_rss_mib"] / ref["peak_rss_mib"]
            extra += f"  x{s['time_ratio']:.2f} time  x{s['rss_ratio']:.2f} peak RSS"
        runs_s = " ".join(f"{x:.2f}" for x in s["seconds_all"])
        print(
            f"  {name:17} {s['seconds']:7.2f} s (runs {runs_s})"
            f"  peak RSS {s['peak_rss_mib']:7.0f} MiB{extra}"
        )
    daily = summary["analyze look 5"]
    verdict = "meets" if daily["time_ratio"] <= 1.0 else "misses"
    print(f"  daily look / reference time {daily['time_ratio']:.2f}x (goal <= 1.0x): {verdict}")
    print(f"  sums, analyze look 5: {sums_line(daily['last']['sums'])}")
    print(f"  sums, duckdb query:   {sums_line(ref['last']['sums'])}")
    print(f"  quarantined by the analysis: {daily['last']['quarantined']}")
    return {
        "impressions": args.impressions,
        "users": users,
        "rows": counts,
        "parquet_mib": size,
        "generate_s": gen_s,
        "cores": os.cpu_count(),
        "runs": summary,
    }


if __name__ == "__main__":
    main()
