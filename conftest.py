"""The root conftest: what every test folder shares, tests/ and components/<name>/tests/.

tests/ holds the shared test support (the fake servers, the kube-apiserver harness, the chart
installer, KFP artifact helpers), imported by name (`from cluster import ...`): it goes on
sys.path here, since with --import-mode=importlib pytest puts no test folder there. The
shared fixtures (a tiny world, its index, the kube-apiserver, ...) are tests/shared_fixtures.py,
loaded as a plugin so that every folder sees the same session-scoped instances.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

pytest_plugins = ["shared_fixtures"]
