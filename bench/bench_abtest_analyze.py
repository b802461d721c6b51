"""Benchmark: `crops abtest analyze` on 10 million logged impressions against plain queries.

Synthetic A/A logs (`crops.abtest.synthlogs`: 5 days, 8 shown impressions per request, a few
503s and duplicated search rows) of ``--impressions`` shown rows are written once into a temp
folder. Then, in the same run and alternating the order, each of these runs ``--repeats`` times,
each in its own child process (time of the call itself, peak RSS of the whole child from
``VmHWM``):

- ``first run, 5 looks``: `analyze_logs` with a fresh ledger and the analysis time an hour after
  the last day: it reads and validates every row, digests every day (`crops.abtest.digest`)
  and takes all five cumulative looks (plots and quarantine written, as the CLI does);
- ``daily look 5``: the CronJob's daily cost. The ledger holds looks 1-4 and the digests of
  days 1-4, made by a run an hour after day 4 that saw days 1-4 only (day 5's partitions were
  moved aside for it, as they did not exist yet); so it reads and validates day 5's rows only,
  digests them, and takes look 5 over all five days (a fresh copy of the ledger each run);
- ``look 5, all digested``: the same look when day 5 is digested too (a retry of the daily run,
  or the look alone): the cost of a look over all the data once it is digested;
- ``duckdb counts``: one plain DuckDB SQL query over the raw parquet files computing per-arm
  counts: impressions, clicks and long plays (clicked and watch_ms >= least(duration_ms,
  18000)) of the search log's shown rows, and requests and reformulations (the user's next
  request, by ts, within 90 s and with another query) of the request log. Its sums are not the
  analysis's: it counts duplicated events twice and skips the rules below;
- ``duckdb same sums`` and ``polars same sums``: the plain query of the same per-arm sums the
  analysis reports, in DuckDB SQL and in polars' lazy API: a duplicated (request_id, video_id)
  counts once, a user's requests are the search log's plus the request log's that never
  reached it, each user counts in the arm that served them first; their sums are checked
  equal to the analysis's and the verdict printed.

Times are the median of the repeats, peaks the largest; ratios are against the faster of the
two same-sums queries (the goal: no slower than that query), and, in brackets, against the
counts query. Each analyze row also shows where its time went (`report["timings"]`:
read+validate, digesting, the decision, and writing the report and plots).

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


SAME_SUMS_SQL = """
WITH rows AS (
  -- one row per (request_id, video_id): a duplicate event counts once
  SELECT DISTINCT ON (request_id, video_id)
         request_id, user_id, arm, ts, query, stage, clicked, watch_ms, duration_ms
  FROM read_parquet('{logs}/search_log/*/*.parquet')
), searched AS (
  SELECT request_id, first(user_id) AS user_id, first(arm) AS arm, min(ts) AS ts,
         first(query) AS query,
         count(*) FILTER (WHERE stage = 'shown') AS impressions,
         count(*) FILTER (WHERE stage = 'shown' AND clicked) AS clicks,
         count(*) FILTER (WHERE stage = 'shown' AND clicked
                          AND watch_ms >= least(duration_ms, {long_ms})) AS long_plays
  FROM rows GROUP BY request_id
), logged AS (
  SELECT try_cast(request_id AS BIGINT) AS rid, user_id, ts, query,
         CASE model_hash WHEN '{control}' THEN 'control' WHEN '{candidate}' THEN 'treatment'
         END AS arm
  FROM read_parquet('{logs}/request_log/*/*.parquet')
  WHERE user_id IS NOT NULL
), reqs AS (
  -- a user's requests: the search log's, and the request log's that never reached it
  SELECT user_id, ts, query FROM searched
  UNION ALL
  SELECT user_id, ts, query FROM logged l
  WHERE NOT EXISTS (SELECT 1 FROM searched s WHERE s.request_id = l.rid)
), reform AS (
  SELECT user_id, count(*) AS requests,
         count(*) FILTER (WHERE n_ts - ts <= INTERVAL {window_s} SECOND AND n_query <> query)
           AS reformulated
  FROM (SELECT user_id, ts, query, lead(ts) OVER w AS n_ts, lead(query) OVER w AS n_query
        FROM reqs WINDOW w AS (PARTITION BY user_id ORDER BY ts))
  GROUP BY user_id
), firsts AS (
  -- each user in the arm that served them first
  SELECT user_id, arg_min(arm, ts) AS arm
  FROM (SELECT user_id, arm, ts FROM searched UNION ALL SELECT user_id, arm, ts FROM logged)
  GROUP BY user_id
), shown AS (
  SELECT user_id, sum(impressions) AS impressions, sum(clicks) AS clicks,
         sum(long_plays) AS long_plays
  FROM searched GROUP BY user_id
)
SELECT f.arm, count(*) AS users,
       sum(coalesce(s.impressions, 0)) AS impressions, sum(coalesce(s.clicks, 0)) AS clicks,
       sum(coalesce(s.long_plays, 0)) AS long_plays, sum(coalesce(r.requests, 0)) AS requests,
       sum(coalesce(r.reformulated, 0)) AS reformulated
FROM firsts f LEFT JOIN shown s USING (user_id) LEFT JOIN reform r USING (user_id)
GROUP BY f.arm ORDER BY f.arm
"""


def polars_same_sums(logs: Path, control: str, candidate: str, long_ms: int, window_s: int):
    """The query of SAME_SUMS_SQL in polars' lazy API (one plan, collected once)."""
    import polars as pl

    scan = {"hive_partitioning": False}
    s = pl.scan_parquet(f"{logs}/search_log/*/*.parquet", **scan).unique(
        ["request_id", "video_id"], keep="first", maintain_order=True
    )
    shown = pl.col("stage") == "shown"
    lp = pl.col("watch_ms") >= pl.min_horizontal("duration_ms", pl.lit(long_ms))
    searched = s.group_by("request_id").agg(
        pl.col("user_id", "arm", "query").first(),
        pl.col("ts").min(),
        shown.sum().alias("impressions"),
        (shown & pl.col("clicked")).sum().alias("clicks"),
        (shown & pl.col("clicked") & lp).sum().alias("long_plays"),
    )
    arm = (
        pl.when(pl.col("model_hash") == control)
        .then(pl.lit("control"))
        .when(pl.col("model_hash") == candidate)
        .then(pl.lit("treatment"))
    )
    logged = (
        pl.scan_parquet(f"{logs}/request_log/*/*.parquet", **scan)
        .filter(pl.col("user_id").is_not_null())
        .select(
            pl.col("request_id").cast(pl.Int64, strict=False).alias("rid"),
            "user_id",
            "ts",
            "query",
            arm.alias("arm"),
        )
    )
    only = logged.join(searched.select(pl.col("request_id").alias("rid")), on="rid", how="anti")
    cols = ["user_id", "ts", "query"]
    reqs = pl.concat([searched.select(cols), only.select(cols)]).sort("user_id", "ts")
    nu, nt, nq = (pl.col(c).shift(-1) for c in cols)
    within = (nt - pl.col("ts")).dt.total_milliseconds() <= window_s * 1000
    ref = ((nu == pl.col("user_id")) & (nq != pl.col("query")) & within).fill_null(False)
    reform = reqs.group_by("user_id").agg(
        pl.len().alias("requests"), ref.sum().alias("reformulated")
    )
    firsts = (
        pl.concat([searched.select("user_id", "arm", "ts"), logged.select("user_id", "arm", "ts")])
        .group_by("user_id")
        .agg(pl.col("arm").sort_by("ts").first())
    )
    sums = ["impressions", "clicks", "long_plays"]
    per_user = searched.group_by("user_id").agg(pl.col(sums).sum())
    users = (
        firsts.join(per_user, on="user_id", how="left")
        .join(reform, on="user_id", how="left")
        .fill_null(0)
    )
    counts = [*sums, "requests", "reformulated"]
    out = (
        users.group_by("arm")
        .agg(pl.len().alias("users"), pl.col(counts).sum())
        .sort("arm")
        .collect()
    )
    return out.rows(named=True)


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
                "users": arms[arm]["users"],
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
        "partitions": report["hygiene"]["partitions"],
        "quarantined": {k: report["hygiene"][k]["quarantined"] for k in TABLES},
        "sums": sums,
    }


def child_reference(logs: Path, work: Path, which: str | None) -> dict:
    import duckdb

    from crops.abtest.synthlogs import HASHES
    from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S

    args = {
        "control": HASHES["control"],
        "candidate": HASHES["treatment"],
        "long_ms": LONG_PLAY_MS,
        "window_s": REFORMULATION_WINDOW_S,
    }
    if which == "polars":
        import polars as pl

        t0 = time.perf_counter()
        sums = polars_same_sums(logs, **args)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "threads": pl.thread_pool_size(), "sums": sums}
    sql = (SAME_SUMS_SQL if which == "duckdb" else REFERENCE_SQL).format(logs=logs, **args)
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


def run_child(kind: str, logs: Path, work: Path, arg: str | None = None) -> dict:
    """One measurement in a fresh process: its figures plus the child's peak RSS."""
    work.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", kind, "--logs", str(logs), "--work", str(work)]
    if arg is not None:  # the ledger to start from, or which reference query
        cmd += ["--ledger-from", arg]
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
    cols = ("users", "impressions", "clicks", "long_plays", "requests", "reformulated")
    parts = []
    for s in sums:
        parts.append(f"{s['arm']}: " + " ".join(f"{c} {s[c]:,}" for c in cols if c in s))
    return "  ".join(parts)


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

    seeded, seeded_all = prepare_ledgers(logs, work)
    runs = {
        "first run, 5 looks": ("analyze", None),
        "daily look 5": ("analyze", str(seeded)),
        "look 5, all digested": ("analyze", str(seeded_all)),
        "duckdb counts": ("reference", "counts"),
        "duckdb same sums": ("reference", "duckdb"),
        "polars same sums": ("reference", "polars"),
    }
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(args.repeats):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            kind, arg = runs[name]
            scratch = work / f"run-{rep}-{kind}-{len(results[name])}-{time.monotonic_ns()}"
            results[name].append(run_child(kind, logs, scratch, arg))

    summary = {}
    for name, rs in results.items():
        summary[name] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "seconds_all": [round(r["seconds"], 3) for r in rs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "last": rs[-1],
        }
    same = min(("duckdb same sums", "polars same sums"), key=lambda n: summary[n]["seconds"])
    ref = summary[same]
    counts = summary["duckdb counts"]
    print(
        f"{args.repeats} runs each, alternating order, each in a fresh child process;"
        f" {os.cpu_count()} cores shared, duckdb threads {counts['last']['threads']}; ratios"
        f" against the faster query of the same per-arm sums ({same})"
    )
    for name, s in summary.items():
        s["time_ratio"] = s["seconds"] / ref["seconds"]
        s["rss_ratio"] = s["peak_rss_mib"] / ref["peak_rss_mib"]
        s["time_ratio_counts"] = s["seconds"] / counts["seconds"]
        runs_s = " ".join(f"{x:.2f}" for x in s["seconds_all"])
        print(
            f"  {name:21} {s['seconds']:6.2f} s (runs {runs_s})  peak RSS"
            f" {s['peak_rss_mib']:6.0f} MiB  x{s['time_ratio']:.2f} time"
            f"  x{s['rss_ratio']:.2f} peak RSS  (x{s['time_ratio_counts']:.2f} the counts query)"
        )
        if "timings" in s["last"]:
            t, last = s["last"]["timings"], s["last"]
            report_s = t["total_s"] - t["analysis_s"]
            print(
                f"  {'':21} looks {last['looks_taken']} -> {last['action']};"
                f" read+validate {t['read_s']:.2f} s, digests done {t['digest_s']:.2f} s,"
                f" decision made {t['analysis_s']:.2f} s, report and plots {report_s:.2f} s;"
                f" digests reused {last['partitions']['digests_reused']}"
            )
    for name in ("first run, 5 looks", "daily look 5", "look 5, all digested"):
        r = summary[name]["time_ratio"]
        verdict = "meets" if r <= 1.0 else "misses"
        print(f"  {name} / {same}: {r:.2f}x (goal <= 1.0x): {verdict}")
    daily = summary["daily look 5"]
    mine = {r["arm"]: r for r in daily["last"]["sums"]}
    for name in ("duckdb same sums", "polars same sums"):
        theirs = {r["arm"]: r for r in summary[name]["last"]["sums"]}
        equal = all(int(theirs[a][c]) == mine[a][c] for a in mine for c in mine[a] if c != "arm")
        print(f"  {name} equal to the analysis's sums: {equal}")
        summary[name]["equal_sums"] = equal
    print(f"  sums, daily look 5:    {sums_line(daily['last']['sums'])}")
    print(f"  sums, duckdb counts:   {sums_line(counts['last']['sums'])}")
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


def prepare_ledgers(logs: Path, work: Path) -> tuple[Path, Path]:
    """Ledgers with looks 1-4: with the digests of days 1-4, and of all five days (not timed).

    The first is what the CronJob's run an hour after day 4 leaves: day 5's partitions did not
    exist then, so they are moved aside for it (a rename keeps their files' mtimes).
    """
    from crops.abtest.analyze import analyze_logs
    from crops.abtest.layout import REQUESTS, SEARCH, partition
    from crops.abtest.synthlogs import SynthSpec

    last = SynthSpec().start + timedelta(days=DAYS - 1)
    aside = work / "day-5-aside"
    seeded, seeded_all = work / "ledger-4", work / "ledger-4-all-digested"
    t0 = time.perf_counter()
    moves = [(logs / partition(k, last), aside / k) for k in (SEARCH, REQUESTS)]
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
    try:
        first4 = analyze_logs(
            analyze_config(logs, work / "seed-report", seeded, DAYS - 1), plots=False
        )
    finally:
        for src, dst in moves:
            dst.rename(src)
    shutil.copytree(seeded, seeded_all)
    analyze_logs(analyze_config(logs, work / "seed-report-5", seeded_all, DAYS), plots=False)
    for ledger_file in seeded.glob("*.json"):  # back to looks 1-4, day 5's digests kept
        shutil.copy2(ledger_file, seeded_all / ledger_file.name)
    print(
        f"ledgers with looks {first4['looks_taken_now']} (digests of days 1-4, and of all days)"
        f" prepared in {time.perf_counter() - t0:.1f} s (not measured)"
    )
    return seeded, seeded_all


if __name__ == "__main__":
    main()
