"""Training curves: the validation curve and stop each model folder's training.json records,
gathered per method and drawn as one figure."""

from __future__ import annotations

import json
from pathlib import Path

#: Where training.json may keep its validation curve, first match wins.
CURVE_KEYS = (("validation", "curve"),)  #: where crops train writes the curve


def read_curve(training: dict) -> tuple[str | None, list[dict]]:
    """(the key it was read from, the curve) of a training.json; (None, []) without one."""
    for path in CURVE_KEYS:
        node = training
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, list) and all(isinstance(p, dict) and "step" in p for p in node):
            return ".".join(path), node
    return None, []


def training_curves(methods: dict[str, dict]) -> dict[str, dict]:
    """Per dense method: steps trained, the best step, why it stopped and the validation curve,
    from its model folder's training.json (whatever of these it records)."""
    out: dict[str, dict] = {}
    for name, info in methods.items():
        if info["model_dir"] is None:
            continue
        path = Path(info["model_dir"]) / "training.json"
        if not path.is_file():
            out[name] = {"training_json": None, "curve_key": None, "curve": []}
            continue
        t = json.loads(path.read_text())
        key, curve = read_curve(t)
        validation = t.get("validation") if isinstance(t.get("validation"), dict) else {}
        metrics = t.get("metrics") if isinstance(t.get("metrics"), dict) else {}
        steps = t.get("steps", info.get("steps"))
        if steps is None:
            steps = metrics.get("global_step")
        out[name] = {
            "training_json": str(path),
            "steps": steps,
            "best_step": validation.get("best_step", info.get("best_step")),
            "why_stopped": validation.get("why_stopped", info.get("why_stopped")),
            "curve_key": key,
            "curve": [{k: p.get(k) for k in ("step", "recall", "loss") if k in p} for p in curve],
        }
    return out


def plot_curves(curves: dict[str, dict], path: Path) -> bool:
    """Every method's validation recall against steps in one chart; False if none has a curve."""
    drawn = {n: c["curve"] for n, c in curves.items() if any("recall" in p for p in c["curve"])}
    if not drawn:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, curve in drawn.items():
        pts = [(p["step"], p["recall"]) for p in curve if p.get("recall") is not None]
        ax.plot([s for s, _ in pts], [100 * r for _, r in pts], marker="o", ms=3, label=name)
        best = curves[name].get("best_step")
        for s, r in pts:
            if s == best:
                ax.scatter([s], [100 * r], s=60, facecolors="none", edgecolors="black", zorder=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation recall (%)")
    ax.set_title("Training curves: held-out training queries (circle: the model kept)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
