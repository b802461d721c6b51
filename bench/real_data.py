"""docs/real-data.md, produced by running it: CroPS on real public data, each figure beside the
command that makes it.

    python bench/real_data.py [--data ../shared/data] [--work build/real-data] [--reuse]
        [--encoders hf:minilm hf:e5] [--hf-steps 100] [--hf-batch 16 4]

Runs, in order: the CJK lexical comparison (bench/bench_cjk_lexical.py), `crops ingest
query-title` on QBQTC's train split, BM25 / hash / pretrained encoders zero-shot and fine-tuned
with H-InfoNCE and binary InfoNCE on its by-query held-out slice (`crops train --qrels`, `crops
evaluate --trec-dir`), the graded-training speed bench, and the log importers on the committed
fixtures with the reformulation-window report of `crops mine`. Every command is run from the
repository root with relative paths, and written into the page as it was run. Nothing in the
page is typed by hand; rerun this script to refresh it (hours on 2 CPU cores: each pretrained
encoder row trains or embeds on the CPU; `--reuse` keeps the trained models of a run before).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from crops.schema import judged_label

ROOT = Path(__file__).resolve().parent.parent


class Page:
    """The markdown page being written, and the commands that made its numbers."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def command(
        self, argv: list[str], *, check: bool = True, show_output: bool = False, skip: bool = False
    ) -> str:
        """Run `argv` from the repository root; write it (and optionally its output) here.

        `skip`: what it writes is already there from an earlier run of this script (--reuse):
        the page names the command and says so, instead of running it again."""
        text = shlex.join(argv)
        if skip:
            self.add("```console", f"$ {text}", "```", "<sub>reused from an earlier run</sub>", "")
            return ""
        print(f"$ {text}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        output = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise SystemExit(f"`{text}` failed ({proc.returncode}):\n{output[-4000:]}")
        self.add("```console", f"$ {text}")
        if show_output:
            self.add(_quiet(output).rstrip())
        self.add("```", f"<sub>{seconds:.0f} s, exit {proc.returncode}</sub>", "")
        return output


#: Ray's and the logging module's own lines (worker logs, checkpoint paths in temp folders):
#: not what the command reports, and they name this run's temp paths
_NOISE = re.compile(r"\x1b\[|\(Ray\w+ pid=|\(\w+ pid=\d+\)|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s")


def _quiet(output: str) -> str:
    return "\n".join(line for line in output.split("\n") if not _NOISE.search(line))


def metrics(path: Path) -> dict[str, float]:
    """nDCG@4 and R@100 of a `crops evaluate --trec-dir` metrics file (its one qrels set)."""
    data = json.loads((ROOT / path).read_text())
    flat = dict(_flat(data))
    return {m: next(v for k, v in flat.items() if k.endswith(m)) for m in MEASURES}


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield f"{prefix}{k}", float(v)


MEASURES = ("nDCG@4", "R@100")


class Runs:
    """The commands of the retrieval table, run into WORK, each row's metrics kept."""

    def __init__(self, page: Page, work: str, collection: str, judged: str, *, reuse: bool) -> None:
        self.page, self.work, self.collection, self.judged = page, work, collection, judged
        self.reuse = reuse
        self.rows: list[tuple[str, str, dict[str, float]]] = []

    def evaluate(self, name: str, training: str, what: list[str]) -> None:
        slug = f"{name}-{training}".replace(" ", "_").replace(",", "").replace(":", "_")
        out = f"{self.work}/metrics/{slug}.json"
        argv = ["crops", "evaluate", "--trec-dir", self.collection, *what]
        argv += [a for m in MEASURES for a in ("--measure", m)] + ["--out", out]
        self.page.command(argv, skip=self.reuse and (ROOT / out).is_file())
        self.rows.append((name, training, metrics(Path(out))))

    def train(self, name: str, encoder: str, loss: str, extra: list[str]) -> None:
        model = f"{self.work}/models/{name}-{loss}".replace(":", "_")
        argv = ["crops", "train", "--qrels", self.judged, "--out", model, "--encoder", encoder]
        argv += ["--loss", loss, *extra]
        if loss == "infonce":  # binary: every grade >= 1 is a positive (labels 3 and 5)
            argv += ["--positive-min-label", str(BINARY_MIN_LABEL)]
        self.page.command(argv, skip=self.reuse and (ROOT / model / "crops_model.json").is_file())
        self.evaluate(name, f"fine-tuned, {LOSS_NAMES[loss]}", ["--model", model])

    def table(self) -> list[str]:
        lines = ["| retriever | training | nDCG@4 | R@100 |", "|---|---|---:|---:|"]
        for name, training, m in self.rows:
            lines.append(f"| {name} | {training} | {m['nDCG@4']:.3f} | {m['R@100']:.3f} |")
        return lines


LOSS_NAMES = {"h-infonce": "H-InfoNCE", "infonce": "binary InfoNCE"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the public data folder")
    ap.add_argument("--work", default="build/real-data", help="scratch folder (relative: root)")
    ap.add_argument("--out", default="docs/real-data.md")
    ap.add_argument(
        "--hf-steps", type=int, default=100, help="training steps of each pretrained encoder"
    )
    ap.add_argument(
        "--encoders",
        nargs="*",
        default=list(PRETRAINED),
        help="pretrained encoders to compare (hf: names or aliases)",
    )
    ap.add_argument(
        "--hf-batch",
        nargs=2,
        type=int,
        default=(16, 4),
        metavar=("QUERIES", "GROUP"),
        help="pretrained encoders' batch: query groups and samples per group (CPU-sized)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep WORK and reuse the models and metrics an earlier run left there",
    )
    args = ap.parse_args()
    work, data = args.work, args.data
    (ROOT / work).mkdir(parents=True, exist_ok=True)
    for old in (ROOT / work).iterdir():  # --reuse keeps only the trained models and metrics
        if not (args.reuse and old.name in ("models", "metrics")):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    page = Page()
    page.add(
        "# CroPS on real data",
        "",
        "<!-- generated by `python bench/real_data.py`; do not edit by hand -->",
        "Produced by `python bench/real_data.py` (every command below was run by it, from the"
        " repository root, and every figure is read from what that command wrote). Data:"
        f" `{data}` (see its READMEs). Rerun the script to refresh this page.",
        "",
    )
    qbqtc = f"{work}/qbqtc"
    page.add(
        "## QBQTC: Chinese query-title pairs, graded 0/1/2",
        "",
        "Imported as a graded collection: videos are the titles, the judgements of 80 % of the"
        " queries become `judged` training samples (HLA label 1 + round(4 g/2): 1/3/5), the"
        " other 20 % (by query, `crops.ingest.split.held_out`) are the evaluation collection,"
        " retrieving from all titles.",
        "",
    )
    page.command(
        ["crops", "ingest", "query-title", f"{data}/qbqtc-train/train.json", "--out", qbqtc]
    )
    page.add(_manifest_table(qbqtc), "")

    page.add("### The lexical layer on Chinese", "")
    page.command(["python", "bench/bench_cjk_lexical.py"], show_output=True)

    page.add(
        "### Retrieval on the held-out queries",
        "",
        "BM25 with the lexical layer's tokenizer; the hash encoder trained from scratch; each"
        " pretrained encoder zero-shot and fine-tuned, with H-InfoNCE on the graded labels and"
        f" with binary InfoNCE (grades >= 1 positive: `--positive-min-label {BINARY_MIN_LABEL}`).",
        "",
    )
    runs = Runs(page, work, f"{qbqtc}/collection", qbqtc, reuse=args.reuse)
    runs.evaluate("BM25", "none", ["--method", "bm25"])
    for loss in LOSS_NAMES:
        runs.train("hash", "hash", loss, [])
    queries, group = args.hf_batch
    hf_extra = ["--max-steps", str(args.hf_steps), "--patience", "0"]
    hf_extra += ["--queries-per-batch", str(queries), "--group-size", str(group)]
    for encoder in args.encoders:
        runs.evaluate(encoder, "zero-shot", ["--model", encoder])
        for loss in LOSS_NAMES:
            runs.train(encoder, encoder, loss, hf_extra)
    page.add("Commands above; the table:", "", *runs.table(), "")

    page.add("## Training speed on graded collections", "")
    page.command(["python", "bench/bench_train_graded.py"], show_output=True)

    logs = f"{work}/trec-session"
    page.add(
        "## Session logs: the TREC Session Track format",
        "",
        "The committed fixture (`tests/ingest/fixtures/sessiontrack_small.xml`, written from the"
        " track's published format) imported, then mined; `crops mine` reports the gaps between"
        " a query and its reformulation and the miner's yield at several windows, so a team sets"
        " `crops mine --window-s` from its own logs (the default stays the paper's 90 s).",
        "",
    )
    page.command(
        [
            "crops",
            "ingest",
            "trec-session",
            "tests/ingest/fixtures/sessiontrack_small.xml",
            "--out",
            logs,
            "--max-quarantine-share",
            "0.2",
        ]
    )
    page.add(_manifest_table(logs), "")
    page.command(
        [
            "crops",
            "mine",
            "--world",
            logs,
            "--out",
            f"{work}/trec-mined",
            "--llm-backend",
            "none",
            "--filter-model",
            "none",
        ],
        show_output=True,
    )

    kuaisar = f"{work}/kuaisar"
    page.add("## KuaiSAR's search and recommendation CSVs", "")
    page.command(
        [
            "crops",
            "ingest",
            "kuaisar",
            "tests/ingest/fixtures/kuaisar_small",
            "--out",
            kuaisar,
            "--max-quarantine-share",
            "0.5",
        ]
    )
    page.add(_manifest_table(kuaisar), "")

    page.add(
        "## Bad input: a GBK file",
        "",
        "Chinese logs often come in GBK. The fixture re-encoded as GBK is refused with what it"
        " looks like, then converted on request:",
        "",
    )
    gbk = ROOT / work / "query_title.gbk.jsonl"
    text = (ROOT / "tests/ingest/fixtures/query_title.jsonl").read_text(encoding="utf-8")
    gbk.write_bytes(text.encode("gbk"))
    page.command(
        ["crops", "ingest", "query-title", f"{work}/{gbk.name}", "--out", f"{work}/gbk"],
        check=False,
        show_output=True,
    )
    page.command(
        [
            "crops",
            "ingest",
            "query-title",
            f"{work}/{gbk.name}",
            "--out",
            f"{work}/gbk",
            "--encoding",
            "gbk",
            "--max-quarantine-share",
            "1",
        ],
        show_output=True,
    )
    (ROOT / args.out).write_text("\n".join(page.lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


def _manifest_table(imported: str) -> str:
    """The counts of an import folder's ingest.json as a markdown table."""
    manifest = json.loads((ROOT / imported / "ingest.json").read_text())
    rows = ["| table | rows | valid | quarantined |", "|---|---:|---:|---:|"]
    for name, t in manifest["tables"].items():
        rows.append(f"| {name} | {t['rows']:,} | {t['valid']:,} | {t['quarantined']:,} |")
    for kind in ("unreadable", "excluded"):
        counted = manifest[kind]
        if kind == "unreadable" or counted["rows"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in counted["reasons"].items()) or "none"
            rows.append(f"| {kind} source rows | {counted['rows']:,} | | ({reasons}) |")
    if "collection" in manifest:
        c = manifest["collection"]
        rows.append(
            f"| collection (held out) | {c['judgements']:,} judgements | {c['queries']:,}"
            f" queries | {c['docs']:,} docs |"
        )
    return "\n".join(rows)


#: pretrained encoders compared by default: English MiniLM and the Chinese-capable
#: multilingual-e5-small (`hf:e5`, twice MiniLM's layers: the longer rows of the table)
PRETRAINED = ("hf:minilm", "hf:e5")
#: binary InfoNCE's threshold on judged labels: grade >= 1 of QBQTC's 0/1/2 is a positive
BINARY_MIN_LABEL = judged_label(1, 2)


if __name__ == "__main__":
    main()
