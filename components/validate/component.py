"""validate: `crops validate` on the world; row-level problems quarantined and counted.

`crops validate` as a component (`crops.schema.validate_dir`): every contract table of the
world is checked; bad rows go to the `quarantine` output with the reason, counted in `metrics`.
The input folder is never written to (the check runs on a folder of links to its tables).
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    world: Input[Dataset],
    quarantine: Output[Dataset],
    metrics: Output[Metrics],
    max_quarantine_share: Optional[float] = None,  # noqa: UP045 - kfp reads typing.Optional only
) -> NamedTuple("Outputs", quarantined=int):
    """Check every contract table of the world; fail when too many rows are bad.

    The input folder is not written to: the quarantined rows (`<table>.parquet` with the
    reason) and `report.json` land in the `quarantine` output (`crops validate DIR --out Q`).

    Args:
        world: a folder of contract tables (videos.parquet required).
        quarantine: the quarantined rows per table and report.json.
        metrics: rows, valid and quarantined per table.
        max_quarantine_share: fail (as `crops validate` exits 1) when a table has more bad rows;
            unset: `crops.schema.MAX_QUARANTINE_SHARE`.

    Returns:
        quarantined: the number of quarantined rows over all tables.
    """
    from collections import namedtuple
    from pathlib import Path

    from crops.schema import MAX_QUARANTINE_SHARE, validate_dir, worst_share

    # the quarantine goes to its own output: the input Dataset is never written
    reports = validate_dir(Path(world.path), Path(quarantine.path))
    total, worst = 0, worst_share(reports)
    for r in reports:
        metrics.log_metric(f"{r.table}_rows", r.rows)
        metrics.log_metric(f"{r.table}_quarantined", r.quarantined)
        total += r.quarantined
    metrics.log_metric("quarantined", total)
    quarantine.metadata.update({r.table: r.as_dict() for r in reports})
    limit = MAX_QUARANTINE_SHARE if max_quarantine_share is None else max_quarantine_share
    if worst > limit:
        raise RuntimeError(
            f"{worst:.2%} of a table's rows quarantined (limit {limit:.2%}): see {quarantine.path}"
        )
    return namedtuple("Outputs", ["quarantined"])(total)
