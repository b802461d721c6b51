"""Diagnostics of a finished `crops experiment` against the simulator's truth.

Every diagnostic number in docs/experiment/results.md comes from this command, none by hand:

- HLA level noise: per sample source (label), the shares of grade 0 / 1 / 2 / 3 videos;
- the relevance filter on level samples (labels 1-3): AUC for grade >= 1, and at a threshold
  the share of samples it drops and of grade-0 ones it catches (`--filter-sample`, seeded);
- top-100 composition on CT queries per trained method, and grade-3 recall@100;
- training curves: where each model stopped, its validation curve (training.json), one PNG;
- `--cleaned METHOD ...`: the truth-cleaned ablation, retrained by `crops experiment`'s code
  and settings on the samples without grade-0 level samples (costs training time).

Writes OUT/diagnostics.json and OUT/diagnostics.md (a fragment for results.md, the command at
its top), OUT/training_curves.png, and with --cleaned OUT/cleaned/ (an experiment folder).
Measurement only: nothing here feeds training. See crops/evaluate/diagnostics.py.

    python bench/experiment_diagnostics.py --world runs/world --mined runs/mined \\
        --experiment runs/experiment --out runs/diagnostics
    python bench/experiment_diagnostics.py ... --cleaned FS-LR CroPS "binary InfoNCE"
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, type=Path, help="the `crops simulate` folder")
    p.add_argument("--mined", required=True, type=Path, help="the `crops mine` folder")
    p.add_argument("--experiment", required=True, type=Path, help="a `crops experiment` OUT")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--filter-sample",
        type=int,
        default=4000,
        help="level samples the relevance filter scores (0: skip that check)",
    )
    p.add_argument("--filter-model", default=None, help="default: the one mining recorded")
    p.add_argument("--threshold", type=float, default=None, help="default: mining's threshold")
    p.add_argument("--seed", type=int, default=0, help="the filter sample's seed")
    p.add_argument("--k", type=int, default=100, help="top-k of the composition")
    p.add_argument("--qrels", default="ct", help="the test set whose queries are searched")
    p.add_argument(
        "--cleaned",
        nargs="*",
        default=[],
        metavar="METHOD",
        help="retrain these methods without grade-0 level samples (the truth-cleaned ablation)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from crops.evaluate.diagnostics import run_diagnostics

    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    t0 = time.perf_counter()
    report = run_diagnostics(
        args.world,
        args.mined,
        args.experiment,
        args.out,
        filter_sample=args.filter_sample,
        filter_model=args.filter_model,
        threshold=args.threshold,
        seed=args.seed,
        k=args.k,
        qrels=args.qrels,
        cleaned=args.cleaned,
        command=shlex.join(["python", "bench/experiment_diagnostics.py", *argv]),
        log=lambda line: print(f"[{time.perf_counter() - t0:6.1f} s] {line}", flush=True),
    )
    print()
    print((args.out / "diagnostics.md").read_text())
    print(f"wrote {args.out / 'diagnostics.json'} and {args.out / 'diagnostics.md'}")
    return report


if __name__ == "__main__":
    main()
