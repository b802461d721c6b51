"""`crops train`: the dual encoder on Ray Train, from options or a `TrainConfig` JSON file."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from crops.console import console, defaults
from crops.console import fail as _fail
from crops.console import options as _options
from crops.console import progress_bar as _progress_bar
from crops.model.convergence import stop_options
from crops.model.train_config import TrainConfig


class LossName(StrEnum):
    h_infonce = "h-infonce"
    infonce = "infonce"
    softmax = "softmax"


#: the options' defaults are TrainConfig's (their one home)
D = defaults(TrainConfig)
DEFAULT_LOSS = LossName(D.loss)


def train(
    samples: Annotated[Path | None, typer.Option(help="samples.parquet from `crops mine`")] = None,
    videos: Annotated[Path | None, typer.Option(help="videos.parquet the samples refer to")] = None,
    qrels: Annotated[
        Path | None,
        typer.Option(
            help="train on human judgements instead of --samples/--videos: an ingest folder"
            " (crops ingest query-title) or a --trec-dir folder (docs, queries, qrels),"
            " converted into OUT-qrels/"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="MODEL_DIR to write")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="a TrainConfig JSON file holding every setting (what a RayJob gets from the"
            " train component); no other option goes with it"
        ),
    ] = None,
    loss: Annotated[LossName, typer.Option(help="training loss")] = DEFAULT_LOSS,
    encoder: Annotated[str, typer.Option(help="hash | hf:<name-or-path> (hf:minilm)")] = D.encoder,
    separate_towers: Annotated[bool, typer.Option(help="query and video towers apart")] = (
        not D.shared
    ),
    workers: Annotated[
        int, typer.Option(help="Ray Train workers (1 on a laptop; N on a cluster)")
    ] = D.workers,
    max_steps: Annotated[
        int | None, typer.Option(help="cap on optimizer steps (default: the stop rule's)")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="stop after this many evaluations without gain; 0: train --max-steps"),
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="steps between validations")] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="steps between checkpoints, at epoch ends")
    ] = D.checkpoint_every,
    val_fraction: Annotated[
        float | None, typer.Option(help="share of the queries held out for validation")
    ] = None,
    queries_per_batch: Annotated[
        int, typer.Option(help="query groups per global batch")
    ] = D.queries_per_batch,
    group_size: Annotated[int, typer.Option(help="samples per query group")] = D.group_size,
    lr: Annotated[float | None, typer.Option(help="default 2e-5 (hf), 1e-3 (hash)")] = None,
    hard_negatives: Annotated[
        str, typer.Option(help="none | bm25 (DPR-style) | model (ANCE-style, refreshed per epoch)")
    ] = D.hard_negatives,
    n_hard: Annotated[int, typer.Option(help="hard negatives per query group")] = D.n_hard,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(
            help="batches per epoch: checkpoints, ANCE refreshes (default: samples/group/batch)"
        ),
    ] = None,
    positive_min_label: Annotated[
        int, typer.Option(help="InfoNCE losses: labels at or above it are positives (1-5)")
    ] = D.positive_min_label,
    gpu: Annotated[bool, typer.Option(help="GPU workers (NCCL)")] = D.use_gpu,
    storage_path: Annotated[
        str | None,
        typer.Option(help="checkpoints: a folder or s3://... (default OUT-checkpoints)"),
    ] = None,
    synth_videos: Annotated[
        Path | None, typer.Option(help="synthetic videos (default: beside the samples, if there)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = D.seed,
) -> None:
    """Train the dual encoder with Ray Train (TorchTrainer, DDP) and write a loadable MODEL_DIR.

    From mined samples (--samples, --videos) or from human judgements (--qrels DIR: graded
    labels 1 + round(4 g/top); --loss infonce --positive-min-label 3 trains them binary).
    """
    from crops.model.train import train as run

    if config is not None:
        cfg = _from_file(config, dict(locals()))
        for field, path in (("samples", cfg.samples), *(("videos", v) for v in cfg.videos)):
            if not Path(path).exists():
                _fail(f"--config {config}: {field} {path}: not found")
    else:
        if qrels is not None:
            if samples is not None or videos is not None:
                _fail("give --qrels or --samples/--videos, not both")
            if out is None:
                _fail("give --out (or --config FILE)")
            samples, videos = _judged_tables(qrels, out)
        for path, what in ((samples, "--samples"), (videos, "--videos"), (out, "--out")):
            if path is None:
                _fail(f"give {what} (or --qrels DIR for judgements, or --config FILE)")
        for path, what in ((samples, "--samples"), (videos, "--videos")):
            if not path.exists():
                _fail(f"{what} {path}: not found")
        video_files = [str(videos)]
        synth = synth_videos or samples.parent / "synth_videos.parquet"
        if synth.exists():
            video_files.append(str(synth))
        elif synth_videos is not None:
            _fail(f"--synth-videos {synth_videos}: not found")
        cfg = _options(
            TrainConfig,
            samples=str(samples),
            videos=video_files,
            out=str(out),
            loss=loss.value,
            encoder=encoder,
            shared=not separate_towers,
            workers=workers,
            queries_per_batch=queries_per_batch,
            group_size=group_size,
            lr=lr,
            hard_negatives=hard_negatives,
            n_hard=n_hard,
            steps_per_epoch=steps_per_epoch,
            stop=stop_options(max_steps, patience, eval_every, val_fraction),
            checkpoint_every=checkpoint_every,
            positive_min_label=positive_min_label,
            use_gpu=gpu,
            storage_path=storage_path,
            seed=seed,
        )
    from crops.schema import SchemaError

    try:
        with _progress_bar() as progress:
            summary = run(cfg, progress)
    except (SchemaError, ValueError) as exc:
        _fail(str(exc))
        return
    m = summary["metrics"]
    loss_value = m.get("loss", float("nan"))
    console.print(
        f"[bold]model written to {cfg.out}[/]: {summary['steps']} steps, loss {loss_value:.4f},"
        f" {m.get('samples_per_s', 0):,.0f} samples/s, {summary['wall_s']:.0f} s;"
        f" {summary['validation']['why_stopped']}"
    )
    if summary["samples_without_video"]:
        console.print(
            f"[yellow]{summary['samples_without_video']} samples skipped: their video is in"
            " none of the video files[/]"
        )


def _judged_tables(qrels: Path, out: Path) -> tuple[Path, Path]:
    """The samples and videos of `--qrels DIR` (crops.ingest.judgements.training_tables); a
    --trec-dir folder is converted into OUT-qrels/, beside the model as OUT-checkpoints is."""
    from crops.evaluate.collection import CollectionError
    from crops.ingest.judgements import training_tables
    from crops.ingest.text import IngestError
    from crops.schema import SchemaError

    side = out.parent / f"{out.name}-qrels"
    try:
        samples, videos, manifest = training_tables(qrels, side)
    except (IngestError, CollectionError, SchemaError) as exc:
        _fail(str(exc))
        raise AssertionError("unreachable") from exc
    table = manifest["tables"].get("samples", {})
    notes = manifest.get("notes", {})
    bad = manifest["unreadable"]["rows"]
    console.print(
        f"judgements from {qrels}: {table.get('valid', 0):,} samples"
        f" (grades {notes.get('grade_scale', '?')} as labels {notes.get('labels', '?')}),"
        f" {table.get('quarantined', 0):,} quarantined, {bad:,} unreadable"
        f"{'' if samples.parent == qrels else f'; converted into {samples.parent}'}"
    )
    return samples, videos


def _from_file(path: Path, values: dict) -> TrainConfig:
    """A TrainConfig from JSON, refused with the file and the field named; `values` are the
    command's options, none of which may differ from its default beside --config."""
    import inspect

    from pydantic import ValidationError

    params = inspect.signature(train).parameters
    given = [k for k, p in params.items() if k != "config" and values[k] != p.default]
    if given:
        _fail(f"--config {path} holds every setting: leave out --{given[0].replace('_', '-')}")
    try:
        return TrainConfig.model_validate_json(path.read_text())
    except OSError as exc:
        _fail(f"--config {path}: {exc.strerror or exc}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the file"
        _fail(f"--config {path}: {where}: {first['msg']}")
    raise AssertionError("unreachable")
