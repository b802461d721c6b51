"""`crops experiment`: the paper's offline table, trained and scored on a simulated world.

Every dense method trains the same encoder to convergence under the same stop rule
(`crops.model.convergence.StopRule`: validation recall on held-out training queries, patience,
a cap), so no method is judged before it has converged and none is granted updates it does not
use (the steps each took are in the table). Each trains on a subset of one mined sample file:

- NCE: click positives, in-batch (random) negatives, InfoNCE;
- DPR: NCE plus BM25 hard negatives;
- ANCE: NCE plus hard negatives from the model's own index, refreshed every epoch;
- FS-LR: every search-log level (click, exposed, ranked, prefiltered) graded by HLA, H-InfoNCE;
- +reformulation, +recommendation, +LLM (CroPS): the ladder, one source at a time;
- binary InfoNCE: CroPS's samples with labels binarised (>= 4 positive), plain InfoNCE;
- CroPS + level filter (an extension the paper does not make): CroPS's samples without the
  level samples (labels 1-3) that the relevance filter scores at or below `level_filter`, on
  the scores `crops mine` records for them (a subset of the same mined file, no re-mining);
- CroPS, oracle synthesis (a diagnostic, only with `oracle_mined`): CroPS's sources from a
  folder mined with the `knowledge` backend, which reads the simulator's truth. It is the upper
  bound the real LLM's "+ LLM" step is measured against, never a default.

The experiment's own mining (no `mined` given) synthesises with the local LLM (llama.cpp and
the packaged SmolLM2-135M-Instruct), within `synth_budget_s`.

BM25 is bm25s over the same videos. The paper's numbers are printed beside ours; ours are on
the simulated world, so compare margins and orderings, not absolute values.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ConfigDict, Field, model_validator

from crops.evaluate.offline import headline
from crops.model.recipe import (
    METHODS,
    ORACLE_ROW,
    Method,
    Recipe,
    method_by_name,
    train_config,
    training_data,
)

Progress = Callable[[str, int, int], None]

#: The paper's Table 2 / ablation numbers in %: (CT Recall@100, QR Recall@100, NDCG@4).
PAPER: dict[str, tuple[float, float, float | None]] = {
    "BM25": (42.9, 22.5, 64.8),
    "NCE": (53.6, 27.5, 65.4),
    "DPR": (56.0, 30.7, 66.5),
    "ANCE": (56.9, 31.3, 67.1),
    "FS-LR": (59.6, 33.0, 66.0),
    "+reformulation": (63.3, 36.1, None),
    "+recommendation": (65.7, 37.4, None),
    "CroPS": (69.1, 40.1, 67.0),
    "binary InfoNCE": (59.9, 32.1, 66.7),
}
BASELINES = ("BM25", "NCE", "DPR", "ANCE", "FS-LR")
LADDER = ("FS-LR", "+reformulation", "+recommendation", "CroPS")
#: The experiment's own mining: how long the local LLM may synthesise (poorest queries first).
EXPERIMENT_SYNTH_BUDGET_S = 1200.0
COLUMNS = (("ct/R@100", "CT R@100"), ("qr/R@100", "QR R@100"), ("graded/nDCG@4", "NDCG@4"))


class ExperimentConfig(Recipe):
    """How `crops experiment` runs: the world, the mined samples, the rows; every row trains
    with the recipe's settings (`crops.model.recipe.Recipe`, the fields inherited here)."""

    model_config = ConfigDict(extra="forbid")

    world: str
    out: str
    mined: str | None = Field(None, description="a `crops mine` folder; default: mine into OUT")
    oracle_mined: str | None = Field(
        None,
        description="a folder mined with `--llm-backend knowledge`: adds the oracle-synthesis"
        " row, the upper bound of the LLM step (a diagnostic; the oracle reads the truth)",
    )
    synth_budget_s: float | None = Field(
        EXPERIMENT_SYNTH_BUDGET_S,
        gt=0,
        description="the experiment's own mining: seconds of local-LLM synthesis (None: all)",
    )
    methods: list[str] = Field(
        default_factory=lambda: [m.name for m in METHODS if m.synthesis == "llm"],
        description="rows to run; the oracle row joins by default when oracle_mined is given",
    )
    force: bool = Field(False, description="retrain methods whose results exist")

    @model_validator(mode="after")
    def _oracle(self) -> ExperimentConfig:
        if ORACLE_ROW in self.methods and not self.oracle_mined:
            raise ValueError(f"the {ORACLE_ROW!r} row needs oracle_mined (--oracle-mined DIR)")
        if self.oracle_mined and "methods" not in self.model_fields_set:
            self.methods = [*self.methods, ORACLE_ROW]
        return self


def train_method(
    cfg: ExperimentConfig, method: Method, mined: Path, progress: Progress | None
) -> tuple[Path, dict]:
    from crops.model.train import train

    root = Path(cfg.out) / "runs" / method.slug
    world_videos = Path(cfg.world) / "videos.parquet"
    data = training_data(method, mined, world_videos, root / "data", cfg.level_filter)
    tc = train_config(method, cfg, data, root / "model", name=f"experiment-{method.slug}")
    n = data.rows

    def step_progress(task: str, done: int, total: int) -> None:
        if progress:
            progress(f"train {method.name}", done, total)

    summary = train(tc, step_progress)
    info = {
        "samples": n,
        "steps": summary["steps"],
        "best_step": summary["validation"]["best_step"],
        "why_stopped": summary["validation"]["why_stopped"],
        "train_s": round(summary["wall_s"], 1),
        "samples_without_video": summary["samples_without_video"],
    }
    if method.level_filter:
        subset = json.loads((root / "data" / "subset.json").read_text())
        info["level_filter"] = subset["level_filter"]
    return root / "model", info


def run_experiment(cfg: ExperimentConfig, progress: Progress | None = None) -> dict:
    """Train and evaluate every method; results.json, results.md and the chart in OUT."""
    from crops.evaluate.collection import world_collection
    from crops.evaluate.offline import BM25Searcher, DenseSearcher, evaluate
    from crops.model.encoders import DualEncoder

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [method_by_name(n) for n in cfg.methods]
    collection = world_collection(cfg.world)  # fail on a bad world before any training
    llm_mined = Path(cfg.mined) if cfg.mined else _mine(cfg, progress)
    folders = {"llm": llm_mined}
    if cfg.oracle_mined:
        folders["oracle"] = Path(cfg.oracle_mined)
    for kind, folder in folders.items():
        if not (folder / "samples.parquet").is_file():
            raise FileNotFoundError(f"{folder} ({kind}) has no samples.parquet: run `crops mine`")
    results: dict[str, dict] = {}
    for method in methods:
        mined = folders[method.synthesis]
        cached = out / "runs" / method.slug / "result.json"
        key = _run_key(cfg, method, mined)
        if cached.is_file() and not cfg.force:
            previous = json.loads(cached.read_text())
            if previous.get("key") == key:  # same settings and inputs: reuse
                results[method.name] = previous
                continue
        t0 = time.perf_counter()
        if method.dense:
            model_dir, info = train_method(cfg, method, mined, progress)
            searcher = DenseSearcher.exact(
                DualEncoder.load(model_dir), collection.doc_ids, collection.doc_texts, method.name
            )
        else:
            info, searcher = {}, BM25Searcher(collection.doc_ids, collection.doc_texts)
        scores = evaluate(collection, searcher)
        result = {
            "method": method.name,
            "description": method.description,
            "sources": list(method.sources),
            "loss": method.loss if method.dense else None,
            "hard_negatives": method.hard_negatives,
            **info,
            "metrics": headline(scores),
            "wall_s": round(time.perf_counter() - t0, 1),
            "key": key,
        }
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(result, indent=2) + "\n")
        results[method.name] = result
        if progress:
            progress("methods", len(results), len(methods))
    report = {
        "world": str(cfg.world),
        "mined": str(llm_mined),
        "synthesis": _synthesis_summary(folders),
        "config": cfg.model_dump(),
        "results": results,
        "goals": goals(results),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(report))
    plot(results, out / "results.png")
    return report


def _run_key(cfg: ExperimentConfig, method: Method, mined: Path) -> str:
    """What a row's result depends on: the method, the training settings and the input files
    (path, size, mtime); a cached row with another key is retrained."""
    import hashlib

    # the level filter's threshold matters to the level-filter row only
    exclude = {"out", "mined", "oracle_mined", "synth_budget_s", "methods", "force", "workers"}
    if not method.level_filter:
        exclude.add("level_filter")
    settings = cfg.model_dump(exclude=exclude)
    parts = [method.model_dump_json(), json.dumps(settings, sort_keys=True)]
    for path in (Path(cfg.world) / "videos.parquet", mined / "samples.parquet"):
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _mine(cfg: ExperimentConfig, progress: Progress | None) -> Path:
    from crops.mining.config import MineConfig
    from crops.mining.mine import mine
    from crops.mining.relevance import relevance_filter
    from crops.mining.synthesis.factory import build_backend

    target = Path(cfg.out) / "mined"
    if (target / "samples.parquet").is_file() and not cfg.force:
        return target
    # a real LLM (llama.cpp, the packaged SmolLM2-135M), never the simulator's knowledge; the
    # report records the backend that runs (MineConfig's default is auto)
    mine_cfg = MineConfig(llm_backend="local", seed=cfg.seed, synth_budget_s=cfg.synth_budget_s)
    backend = build_backend(
        mine_cfg, world=cfg.world, cache=target / "llm_cache.sqlite", log_dir=target
    )
    scorer = relevance_filter(mine_cfg)  # as `crops mine`: filtered positives, scored levels
    mine(cfg.world, target, mine_cfg, backend, scorer=scorer, progress=progress)
    return target


def _synthesis_summary(folders: dict[str, Path]) -> dict:
    """Which backend and model made each mined folder's llm videos, and how well (from its
    report.json), so the table says what stands behind its "+ LLM" rows."""
    out = {}
    for kind, folder in folders.items():
        path = folder / "report.json"
        if not path.is_file():
            out[kind] = {"folder": str(folder), "note": "no report.json"}
            continue
        rep = json.loads(path.read_text())
        syn, qual = rep.get("synthesis", {}), rep.get("quality", {}).get("llm", {})
        out[kind] = {
            "folder": str(folder),
            "backend": syn.get("backend"),
            "model": syn.get("model"),
            "is_llm": syn.get("is_llm"),
            "videos": syn.get("videos"),
            "queries": syn.get("policy", {}).get("selected"),
            "valid_reply_rate": syn.get("valid_reply_rate"),
            "precision": qual.get("precision"),
        }
    return out


def goals(results: dict[str, dict]) -> dict:
    """The issue's goals: CroPS's relative margins over the best baseline and the ladder."""
    out: dict = {}
    if "CroPS" not in results:
        return out
    crops = results["CroPS"]["metrics"]
    present = [b for b in BASELINES if b in results]
    for key, label, need in (("ct/R@100", "CT", 0.15), ("qr/R@100", "QR", 0.20)):
        if not present:
            break
        best = max(present, key=lambda b: results[b]["metrics"][key])
        base = results[best]["metrics"][key]
        gain = crops[key] / base - 1 if base > 0 else math.inf
        out[f"{label} R@100 vs best baseline"] = {
            "best_baseline": best,
            "relative_gain": round(gain, 4),
            "goal": need,
            "met": bool(gain >= need),
        }
    if present:
        key = "graded/nDCG@4"
        best = max(present, key=lambda b: results[b]["metrics"][key])
        diff = crops[key] - results[best]["metrics"][key]
        out["NDCG@4 vs best baseline"] = {
            "best_baseline": best,
            "difference_points": round(100 * diff, 2),
            "goal": "within 1 point (or ahead)",
            "met": bool(diff >= -0.01),
        }
    ladder = [m for m in LADDER if m in results]
    if len(ladder) > 1:
        steps = []
        for prev, cur in zip(ladder, ladder[1:], strict=False):
            dct = results[cur]["metrics"]["ct/R@100"] - results[prev]["metrics"]["ct/R@100"]
            dqr = results[cur]["metrics"]["qr/R@100"] - results[prev]["metrics"]["qr/R@100"]
            steps.append(
                {
                    "step": f"{prev} -> {cur}",
                    "ct_gain": round(dct, 4),
                    "qr_gain": round(dqr, 4),
                    "adds_recall": bool(dct > 0 and dqr > 0),
                }
            )
        out["ladder"] = {"steps": steps, "met": all(s["adds_recall"] for s in steps)}
    if ORACLE_ROW in results and "+recommendation" in results:
        base = results["+recommendation"]["metrics"]
        oracle = results[ORACLE_ROW]["metrics"]
        out["LLM step vs oracle"] = {
            k: {
                "llm_gain": round(crops[k] - base[k], 4),
                "oracle_gain": round(oracle[k] - base[k], 4),
            }
            for k in ("ct/R@100", "qr/R@100")
        }
    return out


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _stop_sentence(stop: dict) -> str:
    if stop["patience"] is None:
        return f"Each dense method trains exactly {stop['max_steps']} steps."
    return (
        f"Each dense method trains until validation recall@{stop['val_k']} on"
        f" {100 * stop['val_fraction']:.0f} % held-out training queries gains nothing for"
        f" {stop['patience']} evaluations {stop['eval_every']} steps apart (cap"
        f" {stop['max_steps']} steps); the model kept is the best one, at `best step`."
    )


def _synthesis_lines(synthesis: dict) -> list[str]:
    """Who wrote the llm videos of the LLM rows and of the oracle row."""
    lines = []
    for kind, label in (("llm", "LLM rows"), ("oracle", f"{ORACLE_ROW!r} row")):
        s = synthesis.get(kind)
        if not s or not s.get("backend"):
            continue
        who = f"`{s['model']}` via {s['backend']}" if s.get("model") else f"{s['backend']}"
        prec = "" if s.get("precision") is None else f", precision {100 * s['precision']:.1f} %"
        valid = (
            ""
            if s.get("valid_reply_rate") is None
            else f", {100 * s['valid_reply_rate']:.0f} % valid replies"
        )
        lines.append(
            f"Synthesis of the {label}: {who}, {s['videos']} videos for {s['queries']} queries"
            f"{valid}{prec} (judged by the world's text relevance model)."
        )
    return lines


def render_markdown(report: dict) -> str:
    results = report["results"]
    cfg = report["config"]
    stop = cfg["stop"]
    lines = [
        "# CroPS offline experiment",
        "",
        f"World `{Path(report['world']).name}`; samples from `{Path(report['mined']).name}`;"
        f" encoder `{cfg['encoder']}`, {cfg['queries_per_batch']} queries x"
        f" {cfg['group_size']} samples per batch. " + _stop_sentence(stop),
        "Ours are on the simulated world, the paper's on Kuaishou's logs (in %): compare"
        " margins and orderings, not absolute values.",
        *_synthesis_lines(report.get("synthesis", {})),
        "",
        "| method | CT R@100 | QR R@100 | NDCG@4 | paper CT | paper QR | paper NDCG@4 |"
        " samples | best step / steps | what it is |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        m = r["metrics"]
        paper = PAPER.get(name, (None, None, None))
        ours = " | ".join(_pct(m[k]) for k, _ in COLUMNS)
        theirs = " | ".join("" if p is None else f"{p:.1f}" for p in paper)
        steps = f"{r['best_step']} / {r['steps']}" if r.get("steps") else ""
        lines.append(
            f"| {name} | {ours} | {theirs} | {r.get('samples', '')} | {steps}"
            f" | {r['description']} |"
        )
    g = report["goals"]
    if g:
        lines += ["", "## Goals", ""]
        for key, v in g.items():
            if key == "ladder":
                for s in v["steps"]:
                    lines.append(
                        f"- ladder {s['step']}: CT {100 * s['ct_gain']:+.1f},"
                        f" QR {100 * s['qr_gain']:+.1f} points"
                        f" ({'adds recall' if s['adds_recall'] else 'does NOT add recall'})"
                    )
            elif key == "LLM step vs oracle":
                lines.append(
                    "- + LLM step (+recommendation -> CroPS) against the oracle's: "
                    + ", ".join(
                        f"{k.split('/')[0].upper()} {100 * d['llm_gain']:+.1f}"
                        f" (oracle {100 * d['oracle_gain']:+.1f}) points"
                        for k, d in v.items()
                    )
                )
            elif "relative_gain" in v:
                lines.append(
                    f"- {key} ({v['best_baseline']}): {100 * v['relative_gain']:+.1f} % relative,"
                    f" goal +{100 * v['goal']:.0f} %: {'met' if v['met'] else 'NOT met'}"
                )
            else:
                lines.append(
                    f"- {key} ({v['best_baseline']}): {v['difference_points']:+.2f} points,"
                    f" goal {v['goal']}: {'met' if v['met'] else 'NOT met'}"
                )
    lines += ["", "![results](results.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    """Grouped bars: each method's three scores, ours solid and the paper's as outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(names))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(names)), 4.8))
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c")
    for i, (key, label) in enumerate(COLUMNS):
        ours = [100 * results[n]["metrics"][key] for n in names]
        ax.bar(x + (i - 1) * width, ours, width, label=f"{label} (ours)", color=colors[i])
        paper = [PAPER.get(n, (None, None, None))[i] for n in names]
        ax.scatter(
            [x[j] + (i - 1) * width for j, p in enumerate(paper) if p is not None],
            [p for p in paper if p is not None],
            marker="_",
            s=300,
            color="black",
            zorder=3,
            label="paper" if i == 0 else None,
        )
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("Offline retrieval: simulated world (bars) and the paper (black ticks)")
    ax.legend(ncols=4, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
