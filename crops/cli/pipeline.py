"""`crops pipeline compile | run | submit`: the Kubeflow pipeline (`crops.pipeline`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from crops.console import console, err
from crops.console import fail as _fail

pipeline_app = typer.Typer(
    name="pipeline",
    help="The Kubeflow pipeline: compile it, run it here (kfp.local), submit it to a cluster.",
    no_args_is_help=True,
    add_completion=False,
)


@contextmanager
def _image_warnings() -> Iterator[None]:
    """The library's ImageWarnings as plain `warning:` lines on stderr; others as usual."""
    import warnings

    from crops.pipeline import ImageWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, ImageWarning):
                    err.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


_SYNTHESIS_HELP = (
    "endpoint (an LLM server; its Secret is required) | vllm-offline (GPU mine task) | none"
)


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="IR YAML to write")] = Path("crops_pipeline.yaml"),
    target: Annotated[str, typer.Option(help="cluster | local")] = "cluster",
    image: Annotated[
        str | None, typer.Option(help="image of every task (default crops:0.1.0)")
    ] = None,
    source: Annotated[str, typer.Option(help="simulate | ingest (the world_uri parameter)")] = (
        "simulate"
    ),
    synthesis: Annotated[str, typer.Option(help=_SYNTHESIS_HELP)] = "endpoint",
    task_gpus: Annotated[int, typer.Option(help="GPUs of the train/index tasks themselves")] = 0,
    s3_secret: Annotated[
        str | None, typer.Option(help="a Secret with AWS_* keys for s3:// URIs")
    ] = None,
) -> None:
    """Compile the pipeline to KFP v2 IR YAML (cluster: GPU nodes, PVC, Secrets).

    For the cluster it warns when the image names no registry host.
    """
    from crops.pipeline import PipelineError, compile_pipeline

    options: dict = {"source": source, "synthesis": synthesis, "task_gpus": task_gpus}
    if image:
        options["image"] = image
    if s3_secret:
        options["s3_secret"] = s3_secret
    try:
        with _image_warnings():
            path = compile_pipeline(out, target, **options)
    except PipelineError as exc:
        _fail(str(exc))
        return
    console.print(f"[bold]pipeline compiled to {path}[/] (target {target})", highlight=False)


@pipeline_app.command("run")
def pipeline_run(
    local: Annotated[bool, typer.Option("--local", help="run here under kfp.local")] = False,
    scale: Annotated[str, typer.Option(help="world size: default | tiny")] = "default",
    seed: Annotated[int, typer.Option(help="world seed")] = 1,
    max_steps: Annotated[
        int | None,
        typer.Option(help="cap on each model's steps (default: converge, the stop rule's cap)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="pipeline root: task outputs and logs")] = Path(
        "runs/pipeline"
    ),
    param: Annotated[
        list[str] | None, typer.Option(help="another pipeline argument NAME=VALUE (repeat)")
    ] = None,
    cache: Annotated[bool, typer.Option(help="reuse the outputs of unchanged tasks")] = False,
    verbose: Annotated[bool, typer.Option(help="show every task's output")] = False,
) -> None:
    """Run the whole pipeline here under kfp.local, on the embedded default world."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from crops.evaluate.experiment import COLUMNS
    from crops.pipeline import PipelineError, build, local_arguments, parse_params, run_local

    if not local:
        _fail("give --local (to run on a cluster: crops pipeline submit --host URL)")
    try:
        arguments = local_arguments(
            scale, seed, max_steps, parse_params(param or [], build("local"))
        )
    except PipelineError as exc:
        _fail(str(exc))
        return
    columns = (
        SpinnerColumn(finished_text="[green]done[/]"),
        TextColumn("{task.description:<40}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[last]}"),
    )
    live = err.is_terminal and not verbose
    with Progress(*columns, console=err, disable=not live, redirect_stdout=False) as bar:
        ids: dict[str, int] = {}
        finished: set[str] = set()

        def on_task(event: str, name: str, label: str, detail: str) -> None:
            if event == "start":
                ids[name] = bar.add_task(label, total=1, last="")
            elif event == "update":
                if name in ids and name not in finished:  # a late tick of a finished task
                    bar.update(ids[name], last=escape(detail[-80:]))
                return
            elif event == "success":
                finished.add(name)
                bar.update(ids[name], completed=1, last=f"{detail} s")
            else:
                finished.add(name)
                bar.update(ids[name], description=f"[red]{label} (failed)[/]", last="")
                bar.stop_task(ids[name])
            if not live:
                word = {"start": "start", "success": "done ", "failure": "FAIL "}[event]
                took = f" ({detail} s)" if event != "start" else ""
                err.print(f"{word} {label}{took}", highlight=False)

        err.print(f"running the pipeline under kfp.local into {out} ...", highlight=False)
        try:
            result = run_local(out, arguments, on_task=on_task, verbose=verbose, cache=cache)
        except PipelineError as exc:
            bar.stop()
            _fail(str(exc), code=1)
            return
    table = Table(title="offline retrieval (%)", header_style="bold")
    table.add_column("method")
    for _, label in COLUMNS:
        table.add_column(label, justify="right")
    for name, scores in result["offline"]["scores"].items():
        table.add_row(name, *(f"{100 * scores[key]:.1f}" for key, _ in COLUMNS))
    console.print(table)
    decision = result["decision"]
    colour = {"promote": "green", "hold": "yellow", "rollback": "red"}[decision["action"]]
    console.print(
        f"A/B decision: [bold {colour}]{decision['action'].upper()}[/] after look "
        f"{result['looks_run']} of {result['looks_planned']}",
        highlight=False,
    )
    for reason in decision["reasons"]:
        console.print(f"  - {escape(reason)}", highlight=False, soft_wrap=True)
    shown = {
        "run folder": result["run_dir"],
        "offline table": result["offline_table"],
        "A/B report": result["ab_report_md"],
        "A/B report (json)": result["ab_report_json"],
        "InferenceService manifest": result["isvc_manifest"],
        "task logs": result["log"],
        "summary": result["summary_json"],
    }
    for what, path in shown.items():
        console.print(f"{what}: {path}", highlight=False, soft_wrap=True)
    console.print(f"pipeline finished in {result['wall_s']:.0f} s", highlight=False)


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[str, typer.Option(help="the KFP API, e.g. http://localhost:8888")],
    experiment: Annotated[str, typer.Option(help="experiment to file the run under")] = "crops",
    param: Annotated[
        list[str] | None, typer.Option(help="a pipeline argument NAME=VALUE (repeat)")
    ] = None,
    run_name: Annotated[str | None, typer.Option(help="default crops-<time>")] = None,
    package: Annotated[
        Path | None, typer.Option(help="a compiled package (default: compile for the cluster)")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="namespace of the pipeline's pods and of what they create (the pipeline's"
            " `namespace` parameter); multi-user KFP: your profile namespace; standalone KFP:"
            " its own [default: kubeflow]"
        ),
    ] = None,
    service_account: Annotated[
        str, typer.Option(help="the run's ServiceAccount (RayJob, InferenceService rights)")
    ] = "crops-pipeline",
    image: Annotated[str | None, typer.Option(help="image of every task")] = None,
    synthesis: Annotated[str, typer.Option(help=_SYNTHESIS_HELP)] = "endpoint",
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="kubeconfig for the preflight (default: in-cluster, ~/.kube/config)"),
    ] = None,
    skip_preflight: Annotated[
        bool, typer.Option("--skip-preflight", help="submit without checking the namespace")
    ] = False,
) -> None:
    """Submit a run of the pipeline to a Kubeflow Pipelines backend.

    Before the run is created, a preflight checks with your kubeconfig that the pods'
    namespace has what they need (ServiceAccount and its rights, the artifacts PVC, the
    ConfigMap crops-platform, the LLM Secret and its keys when LLM synthesis is asked for),
    and names everything missing. Exit status: 0 submitted, 2 bad input or a failed preflight,
    1 the KFP host or the Kubernetes API is unreachable, or the host refuses the run.
    """
    from crops.pipeline import HostError, PipelineError, build, parse_params, submit

    options: dict = {"synthesis": synthesis}
    if image:
        options["image"] = image
    try:
        with _image_warnings():
            arguments = parse_params(param or [], build("cluster", **options))
            result = submit(
                host,
                arguments=arguments,
                experiment=experiment,
                run_name=run_name,
                package=package,
                namespace=namespace,
                service_account=service_account,
                options=options,
                kubeconfig=kubeconfig,
                skip_preflight=skip_preflight,
            )
    except HostError as exc:
        _fail(str(exc), code=1)
        return
    except PipelineError as exc:
        _fail(str(exc))
        return
    report = result["preflight"]
    if report is not None:
        for note in report.notes:
            err.print(f"[yellow]preflight:[/] {escape(note)}", highlight=False, soft_wrap=True)
        err.print(
            f"preflight: namespace {result['namespace']} has what the run needs"
            f" ({len(report.passed)} checks passed)",
            highlight=False,
        )
    console.print(
        f"[bold]run {result['run_id']} submitted[/] (experiment {result['experiment']},"
        f" pods in namespace {result['namespace']} as {result['service_account']}):"
        f" {result['url']}",
        highlight=False,
        soft_wrap=True,
    )
