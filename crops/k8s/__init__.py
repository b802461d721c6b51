"""Thin typed clients for the Kubernetes objects crops runs on: RayJobs (training, indexing),
the KServe InferenceService (serving, canary) and the vLLM server (synthesis).

Modules import the `kubernetes` package lazily; `crops.k8s.client` holds configuration and
errors shared by all of them.
"""

from crops.k8s.client import KubeError, KubeTimeout, api_client

__all__ = ["KubeError", "KubeTimeout", "api_client"]
