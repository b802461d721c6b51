"""simulate: the embedded default world (`crops simulate`) as a Dataset.

`crops simulate` as a component: the seeded platform simulator writes the embedded default
world (logs in the data contracts, test sets, ground truth, `world.json`).

Library call: `crops.world.simulate.simulate(WorldConfig.for_scale(scale, seed), world.path)`.
"""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def simulate(
    world: Output[Dataset],
    summary: Output[Metrics],
    scale: str = "default",
    seed: int = 1,
):
    """Simulate the short-video platform (seeded, deterministic) into the `world` folder.

    Args:
        world: the world folder: videos, search_log, rec_log, tests/, truth/, world.json.
        summary: the world's counts and filter-bubble summary (CTR, coverage, ...).
        scale: tiny | default | large.
        seed: random seed; the same seed writes the same bytes.
    """
    from pathlib import Path

    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate as run

    scales = ("tiny", "default", "large")
    if scale not in scales:
        raise ValueError(f"scale {scale!r}: use one of {', '.join(scales)}")
    meta = run(WorldConfig.for_scale(scale, seed=int(seed)), Path(world.path))
    world.metadata.update({"scale": scale, "seed": int(seed), "fingerprint": meta["fingerprint"]})
    for key, value in meta["counts"].items():
        summary.log_metric(f"count_{key}", value)
    for key, value in meta["summary"].items():
        if isinstance(value, int | float):
            summary.log_metric(key, value)
