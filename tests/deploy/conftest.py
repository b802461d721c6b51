"""Fixtures of the deploy tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def dyn(apiserver):
    from kubernetes import dynamic

    return dynamic.DynamicClient(apiserver.api_client())
