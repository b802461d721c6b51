"""deploy: the KServe InferenceService of the trained model, rolled out as a canary."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(
    model: Input[Model],
    index: Input[Artifact],
    manifest: Output[Artifact],
    target: str = "local",
    name: str = "crops",
    namespace: str = "crops",
    image: str = "crops:0.1.0",
    mode: str = "Standard",
    canary_percent: int = 10,
    pvc: str = "crops-artifacts",
    mount_path: str = "/artifacts",
):
    """Create or patch InferenceService `namespace/name` serving the model and its index.

    The model and index folders are published on the artifacts volume under
    `<mount_path>/serving/<name>/<model hash>/`, where the predictor mounts the same volume
    (read-only) and `crops serve` reads them. With target `cluster` the folders are copied
    there and `crops.k8s.inference_service.deploy`
    creates the InferenceService, or patches it so that the new predictor is a canary taking
    `canary_percent` % of the traffic. With target `local` nothing is copied or applied: the
    manifest that would be applied (`crops.k8s.inference_service.manifest`) is the output.

    Args:
        model: the model folder to serve.
        index: its index folder.
        manifest: the InferenceService (YAML): the one applied (cluster) or to apply (local).
        target: local | cluster.
        name: the InferenceService's name.
        namespace: its namespace.
        image: the predictor image (runs `crops serve`).
        mode: the KServe deployment mode: Standard | Serverless.
        canary_percent: traffic share of the new predictor while it is a canary (0..100).
        pvc: the artifacts PersistentVolumeClaim the predictor reads from.
        mount_path: where this task and the predictor mount that volume.
    """
    import json
    import shutil
    from pathlib import Path

    import yaml

    from crops.index.store import model_hash
    from crops.k8s import inference_service as isvc

    if target not in ("local", "cluster"):
        raise ValueError(f"target {target!r}: use local or cluster")
    if not 0 <= canary_percent <= 100:
        raise ValueError(f"canary_percent must be within 0..100, got {canary_percent}")
    digest = model_hash(model.path)[:12]
    published = Path(mount_path) / "serving" / name / digest
    spec = isvc.InferenceServiceSpec(
        name=name,
        namespace=namespace,
        image=image,
        model_path=str(published / "model"),
        index_path=str(published / "index"),
        mode=mode,
        pvc=pvc,
        mount_path=mount_path,
    )
    if target == "cluster":
        for src, what in ((model.path, "model"), (index.path, "index")):
            shutil.copytree(src, published / what, dirs_exist_ok=True)
        written = isvc.deploy(spec, canary_percent=canary_percent)  # the object as applied
    else:
        written = isvc.manifest(spec)
    with open(manifest.path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(json.loads(json.dumps(written, default=str)), fh, sort_keys=False)
    manifest.metadata.update(
        {
            "target": target,
            "inference_service": f"{namespace}/{name}",
            "model_hash": digest,
            "model_path": spec.model_path,
            "index_path": spec.index_path,
            "canary_percent": canary_percent,
            "applied": target == "cluster",
        }
    )
