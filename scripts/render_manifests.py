"""Render the Helm chart into everything generated from it: the kustomize tree in manifests/ and
the packaged platform description (crops/k8s/platform.json).

The chart (charts/crops) is the one hand-written description of the platform. Teams that apply
plain manifests get them from here, rendered with the chart's profiles:

    manifests/namespace/            the namespace (Pod Security labels)
    manifests/base/                 default values (production-sized, CPU)
    manifests/overlays/kind/        profiles/small.yaml + profiles/kind.yaml
    manifests/overlays/minikube/    profiles/small.yaml + profiles/minikube.yaml
    manifests/overlays/gpu/         profiles/gpu.yaml

Run it after changing the chart:

    python scripts/render_manifests.py          # write
    python scripts/render_manifests.py --check  # exit 1 naming every file that drifted

Needs the test extra (helm-python-sdk renders the chart with Helm's own library).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "crops"
MANIFESTS = REPO / "manifests"
PLATFORM_JSON = REPO / "crops" / "k8s" / "platform.json"
RELEASE, NAMESPACE = "crops", "crops"
HEADER = "# Generated from charts/crops by scripts/render_manifests.py: edit the chart, not this.\n"

#: Each rendering: the folder and the chart profiles merged over the default values.
RENDERINGS: dict[str, tuple[str, ...]] = {
    "base": (),
    "overlays/kind": ("small", "kind"),
    "overlays/minikube": ("small", "minikube"),
    "overlays/gpu": ("gpu",),
}

NAMESPACE_OBJ = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {
        "name": NAMESPACE,
        # The restricted profile is audited and warned on, baseline enforced (operators may
        # inject helpers that do not meet "restricted"; every crops container does).
        "labels": {
            "app.kubernetes.io/part-of": "crops",
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
        },
    },
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` merged into a copy of `base`, as Helm merges values files."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def profile_values(profiles: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in profiles:
        values = merge(values, yaml.safe_load((CHART / "profiles" / f"{name}.yaml").read_text()))
    return values


def render_chart(values: dict[str, Any], namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The chart's objects for `values` (merged over its defaults), in template order."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=namespace)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def _yaml(objs: list[dict[str, Any]]) -> str:
    docs = [yaml.safe_dump(o, sort_keys=False, width=100) for o in objs]
    return HEADER + "---\n".join(docs)


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {
        MANIFESTS / "namespace" / "namespace.yaml": _yaml([NAMESPACE_OBJ]),
        MANIFESTS / "namespace" / "kustomization.yaml": HEADER
        + yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["namespace.yaml"],
            },
            sort_keys=False,
        ),
    }
    for folder, profiles in RENDERINGS.items():
        objs = render_chart(profile_values(profiles))
        depth = "../" * (folder.count("/") + 1)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": NAMESPACE,
            "resources": [f"{depth}namespace", "crops.yaml"],
        }
        what = " + ".join(f"profiles/{p}.yaml" for p in profiles) or "the default values"
        files[MANIFESTS / folder / "kustomization.yaml"] = (
            HEADER + f"# The chart rendered with {what}.\n" + yaml.safe_dump(kustomization)
        )
        files[MANIFESTS / folder / "crops.yaml"] = _yaml(objs)
        if folder == "base":
            cm = next(o for o in objs if o["kind"] == "ConfigMap")
            doc = json.loads(cm["data"]["platform.json"])
            files[PLATFORM_JSON] = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    files = outputs()
    if args.check:
        stale = [
            str(p.relative_to(REPO))
            for p, text in files.items()
            if not p.is_file() or p.read_text() != text
        ]
        generated = {p.resolve() for p in files}
        extra = [
            str(p.relative_to(REPO))
            for p in MANIFESTS.rglob("*.yaml")
            if p.resolve() not in generated
        ]
        if stale or extra:
            for path in stale:
                print(f"drifted from the chart: {path}", file=sys.stderr)
            for path in extra:
                print(f"not generated from the chart: {path}", file=sys.stderr)
            print("run: python scripts/render_manifests.py", file=sys.stderr)
            return 1
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
