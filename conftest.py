"""The root conftest: what every test folder shares, tests/ and components/<name>/tests/.

tests/ holds the shared test support (`fakes/`, `support/`: the fake servers, the
kube-apiserver harness, the chart installer, KFP artifact helpers), on sys.path through
pyproject's `pythonpath = ["tests"]`, so that components/<name>/tests/ (packages, so that their
same-named test_component.py files do not collide) import it too (`from support.cluster import
...`). The shared fixtures (a tiny world, its
index, the kube-apiserver, ...) are tests/shared_fixtures.py, loaded as a plugin so that every
folder sees the same session-scoped instances.

pytest puts the repository root on sys.path for this file and for those packages; there the
Dockerfiles' folder docker/ would pass for the `docker` package (kfp.local imports it, and takes
an ImportError to mean no Docker runner): unless the real package is installed, `docker` stays
unimportable, as it is without the root on sys.path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

_docker = importlib.util.find_spec("docker")
if (
    _docker is not None
    and _docker.origin is None  # a namespace package: a folder, not the docker package
    and all(Path(p).resolve() == ROOT / "docker" for p in _docker.submodule_search_locations)
):
    sys.modules["docker"] = None  # `import docker` raises ImportError

pytest_plugins = ["shared_fixtures"]
