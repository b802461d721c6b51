"""`crops index`: embed every video with Ray Data and build a FAISS index folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crops.console import console, defaults
from crops.console import fail as _fail
from crops.console import options as _options
from crops.console import progress_bar as _progress_bar
from crops.console import summary_table as _summary_table
from crops.index.build import IndexConfig

#: the options' defaults are IndexConfig's (their one home)
D = defaults(IndexConfig)


def index_command(
    model: Annotated[Path, typer.Option(help="MODEL_DIR from `crops train`")],
    videos: Annotated[
        list[Path], typer.Option(help="videos table; repeat for more (e.g. synth_videos.parquet)")
    ],
    out: Annotated[Path, typer.Option(help="INDEX_DIR to write")],
    factory: Annotated[
        str, typer.Option(help="FAISS factory string: Flat | HNSW32 | IVF4096,PQ32 | ...")
    ] = D.factory,
    batch_size: Annotated[int, typer.Option(help="texts per embedding batch")] = D.batch_size,
    actors: Annotated[int, typer.Option(help="Ray Data embedding actors")] = D.actors,
    shard_size: Annotated[int, typer.Option(help="vectors per shard (IVF/PQ/SQ: Ray tasks)")] = (
        D.shard_size
    ),
    train_size: Annotated[int, typer.Option(help="training sample (IVF, PQ, SQ)")] = D.train_size,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists searched (default 32)")] = None,
    ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (default 64)")] = None,
    gpu: Annotated[
        bool | None, typer.Option("--gpu/--no-gpu", help="default: GPUs when Ray has any")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an index already in OUT")] = D.force,
) -> None:
    """Embed every video with Ray Data and build a FAISS index folder (inner product)."""
    from crops.index.build import build_index

    cfg = _options(
        IndexConfig,
        model_dir=str(model),
        videos=[str(v) for v in videos],
        out=str(out),
        factory=factory,
        batch_size=batch_size,
        actors=actors,
        shard_size=shard_size,
        train_size=train_size,
        nprobe=nprobe,
        ef_search=ef_search,
        use_gpu=gpu,
        force=force,
    )
    try:
        with _progress_bar() as progress:
            summary = build_index(cfg, progress)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    shown = {
        "count": summary["count"],
        "dim": summary["dim"],
        "factory": summary["factory"],
        "shards": f"{summary['shards']} ({summary['shard_mode']})",
        "embed_s": summary["embed_s"],
        "build_s": summary["build_s"],
        "path": summary["path"],
    }
    for key in ("nprobe", "ef_search"):
        if key in summary:
            shown[key] = summary[key]
    console.print(f"[bold]index written to {out}[/]")
    console.print(_summary_table(shown, "index"))
