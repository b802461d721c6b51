"""deploy: the KServe InferenceService of the trained model, rolled out as a canary once the
offline table allows it.

Rolls the trained model (the candidate) out as the canary of a KServe InferenceService, once
the offline table allows it; never all traffic to an untested model.

**The offline gate.** The evaluate task's `results` give each row's scores. When the
candidate's `metric` (default `graded/nDCG@4`) is lower than the control's by more than
`tolerance` (absolute, default 0.02), nothing is published or applied: the decision is `hold`,
its reason carries the numbers (`offline graded/nDCG@4: CroPS 0.2500 vs NCE 0.3000 (-0.0500,
tolerance 0.02)`), and the A/B task holds too. Otherwise the decision is `canary`.

**Publishing.** The candidate's and the control's model and index folders are copied to the
artifacts volume under `<mount_path>/serving/<name>/<model hash>/{model,index}`; the
predictors (`crops serve`) mount the same volume read-only at the same path. The volume, the
mount path and the predictor image are the platform's (`crops.k8s.platform`): on a cluster the
release's ConfigMap `crops-platform` (`Platform.from_cluster`), locally the chart's defaults.
The task fails, naming the path, when the volume is not mounted there (compile the pipeline
with the release's mount path).

**Rolling out** (`target=cluster`, `crops.k8s.inference_service.deploy`), waiting for Ready
after every change:

- no InferenceService yet: the control serves as the default predictor and the candidate as
  the canary at `canary_percent`. Standard: one object with both (`spec.canary`);
  Serverless: the control is created and Ready first, then the candidate rolls out as the
  next revision with `canaryTrafficPercent`;
- an InferenceService: the candidate becomes its canary beside the model it serves (that
  model is then the A/B test's control; the manifest's metadata names it).

A change that is not Ready within `wait_s` fails the task with the object
(`InferenceService <ns>/<name>`) and KServe's account: every condition that is not True
(type, reason, message, e.g. `PredictorReady=False`), the canaries not ready and the
components' revisions. `target=local` copies and applies nothing; the manifest is what a
first deploy would create.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(
    model: Input[Model],
    index: Input[Artifact],
    control_model: Input[Model],
    control_index: Input[Artifact],
    offline: Input[Artifact],
    manifest: Output[Artifact],
    target: str = "local",
    name: str = "crops",
    namespace: str = "crops",
    mode: str = "Standard",
    canary_percent: int = 10,
    metric: str = "graded/nDCG@4",
    tolerance: float = 0.02,
    wait_s: float = 900.0,
) -> NamedTuple("Outputs", decision=str, reason=str, control_url=str, treatment_url=str):
    """Roll the candidate out as a canary of InferenceService `namespace/name`, unless the
    offline table shows it worse than the control.

    The offline gate: when the candidate's `metric` in the offline results is below the
    control's by more than `tolerance` (absolute), nothing is published or applied and the
    decision is `hold`, with the numbers in the reason and the manifest's metadata; the A/B
    task then holds too. Otherwise the decision is `canary`.

    The candidate (and the control) are published on the artifacts volume under
    `<mount_path>/serving/<name>/<model hash>/{model,index}`, where the predictors mount the
    same volume (read-only) and `crops serve` reads them. The volume, its mount path and the
    predictor image are the platform's: the release's ConfigMap crops-platform on a cluster
    (`Platform.from_cluster`), the chart's defaults locally.

    With target `cluster`, `crops.k8s.inference_service.deploy` applies it and waits for
    Ready after each change: with no InferenceService yet the control serves as the default
    predictor and the candidate as the canary at `canary_percent` (never all traffic to an
    untested model); an existing one gets the candidate as its canary beside the model it
    serves. A timeout fails the task naming the object and KServe's conditions. With target
    `local` nothing is copied or applied: the first-deploy manifest is the output.

    Args:
        model: the candidate model folder (CroPS).
        index: its index folder.
        control_model: the control (the click-only model), served beside the candidate when
            there is no InferenceService yet.
        control_index: its index folder.
        offline: the evaluate task's `results` (results.json: scores per row and column).
        manifest: the InferenceService (YAML): the one applied (cluster) or to apply (local).
        target: local | cluster.
        name: the InferenceService's name.
        namespace: its namespace (and the platform's, on a cluster).
        mode: the KServe deployment mode: Standard | Serverless.
        canary_percent: traffic share of the candidate while it is a canary (0..99).
        metric: the offline column the gate compares (ct/R@100, qr/R@100, graded/nDCG@4).
        tolerance: how much lower (absolute) the candidate's metric may be than the control's.
        wait_s: how long to wait for Ready after each change.

    Returns:
        decision: `canary` or `hold`.
        reason: why, with the offline numbers.
        control_url: the default predictor's in-cluster URL (cluster; empty otherwise).
        treatment_url: the canary's in-cluster URL (cluster; empty otherwise).
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    import yaml

    from crops.index.store import model_hash
    from crops.k8s import inference_service as isvc
    from crops.k8s.platform import Platform

    if target not in ("local", "cluster"):
        raise ValueError(f"target {target!r}: use local or cluster")
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be within 0..100, got {canary_percent}")
    if canary_percent == 100:
        raise ValueError(
            "canary_percent 100 would send all traffic to an untested model: give a share "
            "below 100; the A/B test promotes the candidate when it wins"
        )
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")

    # ---------------------------------------------------------------- the offline gate
    table = json.loads(Path(offline.path).read_text(encoding="utf-8"))
    rows = {r: table.get(r) for r in ("control", "treatment")}
    scores = table.get("scores") or {}
    if not all(rows.values()) or not all(r in scores for r in rows.values()):
        raise ValueError(f"{offline.path}: not the evaluate task's results (control, treatment)")
    if metric not in scores[rows["control"]] or metric not in scores[rows["treatment"]]:
        columns = ", ".join(sorted(scores[rows["control"]]))
        raise ValueError(f"metric {metric!r} is not in the offline table; use one of {columns}")
    control_score = float(scores[rows["control"]][metric])
    candidate_score = float(scores[rows["treatment"]][metric])
    gap = candidate_score - control_score
    numbers = (
        f"offline {metric}: {rows['treatment']} {candidate_score:.4f} vs {rows['control']} "
        f"{control_score:.4f} ({gap:+.4f}, tolerance {tolerance:g})"
    )
    hold = gap < -tolerance
    reason = (
        f"hold: the candidate is worse than the control beyond the tolerance; {numbers}; "
        "nothing deployed"
        if hold
        else f"canary: {numbers}"
    )
    gate = {
        "metric": metric,
        "tolerance": tolerance,
        "candidate": candidate_score,
        "control": control_score,
        "difference": gap,
    }

    # ---------------------------------------------------------------- what to serve
    platform = (
        Platform.from_cluster(namespace) if target == "cluster" else Platform.default(namespace)
    )
    root = Path(platform.mount_path) / "serving" / name
    digests = {
        "candidate": model_hash(model.path)[:12],
        "control": model_hash(control_model.path)[:12],
    }
    specs = {
        role: isvc.InferenceServiceSpec(
            name=name,
            namespace=namespace,
            model_path=str(root / digest / "model"),
            index_path=str(root / digest / "index"),
            mode=mode,
        )
        for role, digest in digests.items()
    }
    candidate, control = specs["candidate"], specs["control"]
    urls = isvc.serving_urls(candidate)
    applied = target == "cluster" and not hold
    if applied:
        platform.mounted_artifacts()  # the predictors read what is copied there
        for spec, m, ix in ((candidate, model, index), (control, control_model, control_index)):
            for src, dst in ((m.path, spec.model_path), (ix.path, spec.index_path)):
                shutil.copytree(src, dst, dirs_exist_ok=True)
        written = isvc.deploy(  # the object as applied, once Ready
            candidate, canary_percent, control=control, platform=platform, wait_s=wait_s
        )
    elif mode == "Standard":  # what a first deploy creates: the control and the canary
        written = isvc.manifest(control, platform, canary=candidate, canary_percent=canary_percent)
    else:  # Serverless: the control first; the candidate then rolls out as the next revision
        written = isvc.manifest(control, platform)
    with open(manifest.path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(json.loads(json.dumps(written, default=str)), fh, sort_keys=False)
    manifest.metadata.update(
        {
            "target": target,
            "inference_service": f"{namespace}/{name}",
            "decision": "hold" if hold else "canary",
            "reason": reason,
            "offline_gate": gate,
            "model_hash": digests["candidate"],
            "model_path": candidate.model_path,
            "index_path": candidate.index_path,
            "control_model_hash": digests["control"],
            "control_model_path": control.model_path,
            "mode": mode,
            "canary_percent": canary_percent,
            "applied": applied,
            "control_url": urls["control"] if applied else "",
            "treatment_url": urls["treatment"] if applied else "",
        }
    )
    if applied and written["spec"].get("canary") and mode == "Standard":
        # an existing service keeps the predictor it serves: that is the A/B test's control
        args = written["spec"]["predictor"]["containers"][0]["args"]
        manifest.metadata["served_control_model_path"] = args[args.index("--model") + 1]
    outputs = namedtuple("Outputs", ["decision", "reason", "control_url", "treatment_url"])
    return outputs(
        manifest.metadata["decision"],
        reason,
        manifest.metadata["control_url"],
        manifest.metadata["treatment_url"],
    )
