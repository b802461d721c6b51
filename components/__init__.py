"""KFP components of the CroPS pipeline: one folder each, `component.py` a thin typed wrapper
over `crops.*` (kubeflow/pipelines-components style: stdlib and kfp at the top, the library
imported inside the function body, typed artifacts).

Every component runs in one image, the project installed with its dependencies:
`BASE_IMAGE` (`crops:0.1.0`). Set `CROPS_IMAGE` before importing to compile for another
image, or give `build_pipeline(image=...)` (`crops pipeline compile --image ...`).
"""

from __future__ import annotations

import os

#: The image every component runs in; no registry host here (a cluster pulls it from its own).
DEFAULT_IMAGE = "crops:0.1.0"
BASE_IMAGE = os.environ.get("CROPS_IMAGE", DEFAULT_IMAGE)

__all__ = ["BASE_IMAGE", "DEFAULT_IMAGE"]
