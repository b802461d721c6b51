"""Benchmark: `crops serve` with the request log on against off, under the same open-loop load.

The index, requests (~5 % malformed) and load generator are those of `bench_serve.py` (the
same 100,000-video Flat index by default, open loop at 200 requests/s, latency from each
request's due time). In one run, a server without ``--request-log`` and then one with it take
the same requests after the same warm-up; p99 of the well-formed requests is compared (goal:
logging on within 1.2x of off). After the logging server stops (SIGTERM: the writer flushes),
the rows under its log folder are counted against the requests sent (warm-up included: every
request, malformed or not, is one row when it holds one query), and read back through the
``request_log`` contract.

    python bench/bench_request_log.py --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import build, load, make_requests, pct, start  # noqa: E402

from crops.serve.process import stop_server  # noqa: E402
from crops.serve.reqlog import read_request_log  # noqa: E402

GOAL_RATIO = 1.2


def run_once(model_dir, index_dir, work: Path, name: str, extra: list[str], warm, reqs, args):
    proc, url = start(model_dir, index_dir, work / f"server-{name}.log", extra)
    try:
        asyncio.run(load(url, warm, 100.0, args.top_k, args.timeout))
        results, wall = asyncio.run(load(url, reqs, args.rate, args.top_k, args.timeout))
    finally:
        stop_server(proc, grace_s=30)
    good = np.array([want == 2 for _, want in reqs])
    lat = np.array([r[0] for r in results])
    return {
        "p50_ms": pct(lat[good], 50),
        "p99_ms": pct(lat[good], 99),
        "max_ms": float(lat[good].max()),
        "errors": sum(not r[2] for r in results),
        "achieved_rps": len(reqs) / wall,
        "exit_code": proc.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--factory", default="Flat")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--requests", type=int, default=3_000)
    ap.add_argument("--bad-share", type=float, default=0.05)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-reqlog-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, index_dir, vocab = build(work, args.videos, args.factory)
    queries, reqs = make_requests(args.requests, args.bad_share, vocab, args.top_k)
    warm = [
        (json.dumps({"instances": [{"query": q, "top_k": args.top_k}]}).encode(), 2)
        for q in queries[:200]
    ]
    log_dir = work / f"reqlog-{int(time.time())}"
    off = run_once(model_dir, index_dir, work, "off", [], warm, reqs, args)
    on = run_once(
        model_dir, index_dir, work, "on", ["--request-log", str(log_dir)], warm, reqs, args
    )
    valid, quarantined, report = read_request_log(log_dir)
    sent = len(warm) + len(reqs)
    statuses = valid["status"].value_counts().sort("status").rows()
    figures = {
        "videos": args.videos,
        "factory": args.factory,
        "cores": os.cpu_count(),
        "requests": len(reqs),
        "rate": args.rate,
        "off": off,
        "on": on,
        "p99_ratio": on["p99_ms"] / off["p99_ms"],
        "sent_with_warmup": sent,
        "log_rows": report.rows,
        "log_rows_valid": valid.height,
        "log_rows_quarantined": quarantined.height,
        "log_files": len(list(log_dir.glob("day=*/requests-*.parquet"))),
        "log_statuses": dict(statuses),
    }
    print(
        f"{args.factory} index, {args.videos:,} videos, {len(reqs):,} requests open-loop at"
        f" {args.rate:.0f}/s (+{len(warm)} warm-up), {os.cpu_count()} cores shared"
    )
    for name in ("off", "on"):
        f = figures[name]
        print(
            f"  request log {name:3}  p50 {f['p50_ms']:.2f} ms  p99 {f['p99_ms']:.2f} ms"
            f"  max {f['max_ms']:.1f} ms  {f['achieved_rps']:.1f} req/s  errors {f['errors']}"
        )
    verdict = "meets" if figures["p99_ratio"] <= GOAL_RATIO else "misses"
    print(f"  p99 on/off {figures['p99_ratio']:.2f}x (goal <= {GOAL_RATIO}x): {verdict}")
    lost = sent - report.rows
    print(
        f"  log: {report.rows} rows in {figures['log_files']} files for {sent} requests sent"
        f" (lost {lost}), {quarantined.height} rows refused by the contract;"
        f" statuses {figures['log_statuses']}"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
