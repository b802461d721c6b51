"""Plot the validation curves of trained model folders in one picture (the README's figure).

Each model folder's training.json (`crops train`, the pipeline's train tasks) records its
validation recall every `eval_every` steps, the best step and why training stopped. This draws
them together, the kept model circled, and prints the stop line of each:

    python bench/plot_training_curves.py --model CroPS=RUN/train/model \\
        --model "click-only (NCE)"=RUN/train-2/model --out docs/pipeline_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crops.evaluate.diagnostics import plot_curves, training_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeat)")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = ap.parse_args()
    methods = {}
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "training.json").is_file():
            ap.error(f"--model {item!r}: expected NAME=MODEL_DIR with a training.json")
        methods[name] = {"model_dir": folder}
    curves = training_curves(methods)
    for name, c in curves.items():
        print(f"{name}: {c['steps']} steps, best at {c['best_step']}: {c['why_stopped']}")
    if not plot_curves(curves, args.out):
        raise SystemExit("no model folder records a validation curve")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
