"""Benchmark: the `crops serve` endpoint under open-loop load, against in-process search.

A 100,000-video index (hash-tower embeddings of synthetic captions, 128-d; FAISS ``Flat`` by
default, ``--factory HNSW32`` for the graph index) is served by the real server (`crops serve`,
1 torch/FAISS thread per process) on loopback. An asyncio load generator (64 keep-alive
connections on raw asyncio streams, the lightest client Python has) sends
10,000 v1 requests (``top_k`` 100) open-loop at 200 requests/s: request ``i`` is due at
``i / rate`` whatever happened before, and latency counts from that due time, so a stalled
server is charged for the queue it builds (no coordinated omission). About 5 % of the requests
are malformed (empty query, top_k 0, a bool top_k, an unknown field, a 2 KB query, a body
that is not JSON): a 4xx answer is correct for those; a 5xx, a connection error, a timeout, a
wrong status or a wrong-length answer counts as an error.

Reference, in the same process: `DenseRetriever.search` on the same index, one query at a
time, 1 torch/FAISS thread, on the first ``--reference`` queries; ratios server / reference.

The load generator and the server share the machine's cores (2 here): the generator's own CPU
use is reported beside the server's.

    python bench/bench_serve.py
    python bench/bench_serve.py --factory HNSW32 --requests 4000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from crops.serve.process import ServerProcessError, start_server, stop_server, wait_for_url

GOAL_P99_MS = 20.0


def build(work: Path, videos: int, factory: str, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """(model_dir, index_dir, vocabulary); reuses a matching index already under ``work``."""
    import faiss
    import torch

    from crops.index.store import model_hash, write_index
    from crops.model.encoders import build_dual_encoder

    rng = np.random.default_rng(seed)
    vocab = [
        f"{a}{b}"
        for a in ("ka", "lo", "mi", "nu", "pe", "ra", "su", "ti")
        for b in ("ban", "cor", "dil", "fen", "gus", "hal", "jot", "kem", "lun", "mox")
    ]
    vocab = [f"{w}{i}" for w in vocab for i in range(25)]  # 2,000 words
    model_dir = work / "model"
    index_dir = work / f"index-{factory.replace(',', '_')}-{videos}"
    if not (model_dir / "manifest.json").exists():
        build_dual_encoder("hash", dim=128, seed=seed).save(model_dir)
    if (index_dir / "manifest.json").exists():
        return model_dir, index_dir, vocab
    from crops.model.encoders import DualEncoder

    torch.set_num_threads(os.cpu_count() or 1)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    model = DualEncoder.load(model_dir)
    t0 = time.perf_counter()
    cached = work / f"vectors-{videos}.npy"  # one embedding pass serves every factory
    if cached.exists():
        vectors = np.load(cached)
    else:
        texts = [" ".join(rng.choice(vocab, int(rng.integers(6, 16)))) for _ in range(videos)]
        vectors = model.embed(texts, side="doc", batch_size=1024)
        np.save(cached, vectors)
    index = faiss.index_factory(model.dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    manifest = {"model_hash": model_hash(model_dir), "factory": factory, "metric": "ip"}
    write_index(index_dir, index, np.arange(1, videos + 1, dtype=np.int64) * 7, manifest)
    print(f"built {factory} index of {videos:,} videos in {time.perf_counter() - t0:.0f} s")
    return model_dir, index_dir, vocab


def make_requests(n: int, bad_share: float, vocab: list[str], top_k: int, seed: int = 1):
    """(queries, [(body bytes, content type, expected status class)]): ~bad_share malformed."""
    rng = np.random.default_rng(seed)
    queries = [" ".join(rng.choice(vocab, int(rng.integers(1, 5)))) for _ in range(n)]
    bad = [
        (json.dumps({"instances": [{"query": "  ", "top_k": top_k}]}).encode(), 4),
        (json.dumps({"instances": [{"query": "a", "top_k": 0}]}).encode(), 4),
        (json.dumps({"instances": [{"query": "a", "top_k": True}]}).encode(), 4),
        (json.dumps({"instances": [{"query": "a", "topk": 3}]}).encode(), 4),
        (json.dumps({"instances": [{"query": "x" * 2048}]}).encode(), 4),
        (b"{not json", 4),
    ]
    reqs = []
    for q in queries:
        if rng.random() < bad_share:
            body, want = bad[int(rng.integers(len(bad)))]
        else:
            body, want = json.dumps({"instances": [{"query": q, "top_k": top_k}]}).encode(), 2
        reqs.append((body, want))
    return queries, reqs


def reference(model_dir: Path, index_dir: Path, queries: list[str], k: int) -> np.ndarray:
    """Per-query in-process search latencies (ms), one thread, after a warm-up."""
    from crops.index.retriever import DenseRetriever
    from crops.serve.server import set_threads

    set_threads(1)
    retriever = DenseRetriever.load(model_dir, index_dir)
    for q in queries[:50]:
        retriever.search([q], k)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        retriever.search([q], k)
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def start(model_dir: Path, index_dir: Path, log: Path, extra: list[str]):
    """`crops serve` on a free port (crops.serve.process): (process, URL)."""
    args = ["--model", model_dir, "--index", index_dir, "--port", "0", "--max-top-k", "1000"]
    proc = start_server([*args, *extra], log)
    try:
        return proc, wait_for_url(proc, log, 180)
    except ServerProcessError as exc:
        stop_server(proc)
        raise SystemExit(str(exc)) from exc


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a few microseconds of client CPU
    per request (httpx's pool costs ~0.7 ms per request and degrades with many requests in
    flight, which on 2 shared cores would be charged to the server)."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + body)
            status_line = await self.reader.readline()
            headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            status = int(status_line.split()[1])
            length = int(re.search(r"content-length: *(\d+)", headers).group(1))
            payload = await self.reader.readexactly(length)
            if "connection: close" in headers:
                await self.close()
            return status, payload
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(
    url: str,
    reqs: list[tuple[bytes, int]],
    rate: float,
    top_k: int,
    timeout_s: float,
    connections: int = 64,
):
    """Open loop: request i is due at i / rate and is queued then, whatever came before; a
    pool of keep-alive connections sends the queue. Per request: (ms from due time, ms from
    send, ok, detail)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    results: list[tuple[float, float, bool, str]] = [(0.0, 0.0, False, "not sent")] * len(reqs)
    queue: asyncio.Queue = asyncio.Queue()

    async def worker() -> None:
        conn = Connection(host, int(port), "/v1/models/crops:predict")
        while True:
            item = await queue.get()
            if item is None:
                await conn.close()
                return
            i, due = item
            body, want = reqs[i]
            sent = time.perf_counter()
            try:
                status, text = await asyncio.wait_for(conn.post(body), timeout_s)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}".encode()
                await conn.close()
            done = time.perf_counter()
            ok = status // 100 == want
            detail = str(status)
            if ok and want == 2:
                preds = json.loads(text)["predictions"]
                ok = len(preds) == 1 and len(preds[0]["video_ids"]) == top_k
                detail = detail if ok else "200 but wrong length"
            elif not ok:
                detail = f"{status}: {text[:120]!r}"
            results[i] = ((done - due) * 1000, (done - sent) * 1000, ok, detail)

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter() + 0.05
    for i in range(len(reqs)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return results, time.perf_counter() - start


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--factory", default="Flat", help="FAISS factory string (Flat, HNSW32)")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--bad-share", type=float, default=0.05)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--reference", type=int, default=2_000, help="queries for the reference")
    ap.add_argument("--timeout", type=float, default=5.0, help="client timeout (s)")
    ap.add_argument("--work", type=Path, help="where to build (reused); default a temp folder")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("server_args", nargs="*", help="extra `crops serve` options after --")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, index_dir, vocab = build(work, args.videos, args.factory)
    queries, reqs = make_requests(args.requests, args.bad_share, vocab, args.top_k)
    ref = reference(model_dir, index_dir, queries[: args.reference], args.top_k)

    proc, url = start(model_dir, index_dir, work / "server.log", args.server_args)
    try:
        server = psutil.Process(proc.pid)
        me = psutil.Process()

        def server_cpu_s() -> float:  # the server and its worker processes (--workers N)
            procs = [server, *server.children(recursive=True)]
            return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

        warm = [
            (json.dumps({"instances": [{"query": q, "top_k": args.top_k}]}).encode(), 2)
            for q in queries[:200]
        ]
        asyncio.run(load(url, warm, 100.0, args.top_k, args.timeout))
        cpu0_s, cpu0_me = server_cpu_s(), me.cpu_times()
        results, wall = asyncio.run(load(url, reqs, args.rate, args.top_k, args.timeout))
        cpu1_s, cpu1_me = server_cpu_s(), me.cpu_times()
    finally:
        stop_server(proc, grace_s=20)

    lat = np.array([r[0] for r in results])
    service = np.array([r[1] for r in results])
    good = np.array([want == 2 for _, want in reqs])
    errors = [r[3] for r in results if not r[2]]
    server_cpu = (cpu1_s - cpu0_s) / wall
    gen_cpu = (cpu1_me.user + cpu1_me.system - cpu0_me.user - cpu0_me.system) / wall
    figures = {
        "videos": args.videos,
        "factory": args.factory,
        "cores": os.cpu_count(),
        "server_args": args.server_args,
        "requests": len(reqs),
        "malformed": int((~good).sum()),
        "target_rps": args.rate,
        "achieved_rps": len(reqs) / wall,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "p50_ms": pct(lat[good], 50),
        "p99_ms": pct(lat[good], 99),
        "max_ms": float(lat[good].max()),
        "service_p50_ms": pct(service[good], 50),
        "service_p99_ms": pct(service[good], 99),
        "malformed_p99_ms": pct(lat[~good], 99),
        "reference_p50_ms": pct(ref, 50),
        "reference_p99_ms": pct(ref, 99),
        "server_cpu_cores": server_cpu,
        "load_average_1min_after": os.getloadavg()[0],
        "generator_cpu_cores": gen_cpu,
    }
    figures["p50_ratio"] = figures["p50_ms"] / figures["reference_p50_ms"]
    figures["p99_ratio"] = figures["p99_ms"] / figures["reference_p99_ms"]
    print(
        f"{args.factory} index, {args.videos:,} videos, {len(reqs):,} requests"
        f" ({figures['malformed']} malformed) open-loop at {args.rate:.0f}/s on"
        f" {os.cpu_count()} cores shared by server and load generator"
    )
    print(
        f"  server  p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms"
        f"  (from due time; service p50 {figures['service_p50_ms']:.2f},"
        f" p99 {figures['service_p99_ms']:.2f})  max {figures['max_ms']:.1f} ms"
    )
    print(
        f"  in-process DenseRetriever.search  p50 {figures['reference_p50_ms']:.2f} ms"
        f"  p99 {figures['reference_p99_ms']:.2f} ms"
    )
    print(
        f"  ratio server/in-process  p50 {figures['p50_ratio']:.2f}x"
        f"  p99 {figures['p99_ratio']:.2f}x"
    )
    print(
        f"  throughput {figures['achieved_rps']:.1f} req/s (target {args.rate:.0f}),"
        f" errors {len(errors)}, CPU: server {server_cpu:.2f} cores,"
        f" load generator {gen_cpu:.2f} cores; machine load average"
        f" {figures['load_average_1min_after']:.1f} (1 min, after)"
    )
    verdict = "meets" if figures["p99_ms"] <= GOAL_P99_MS and not errors else "misses"
    print(f"  goal p99 <= {GOAL_P99_MS:.0f} ms at {args.rate:.0f}/s, zero errors: {verdict}")
    if errors:
        print(f"  error examples: {figures['error_examples']}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
