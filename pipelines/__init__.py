"""Kubeflow Pipelines v2 definitions (`crops_pipeline.py`); `crops pipeline` compiles, runs and
submits them (`crops.pipeline` imports this package from the repository)."""
