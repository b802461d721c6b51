"""evaluate: the offline table on the tiny world."""

import json
from pathlib import Path

from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model
from support.kfp_artifacts import given, out

from crops.components.evaluate import evaluate


def test_evaluate_writes_the_offline_table(tiny_dir: Path, tiny_index, tmp_path: Path) -> None:
    model_dir, index_dir = tiny_index
    metrics, table, results = (
        out(Metrics, tmp_path, "m"),
        out(Markdown, tmp_path, "table"),
        out(Artifact, tmp_path, "results"),
    )
    evaluate.python_func(
        world=given(Dataset, tiny_dir),
        treatment_model=given(Model, model_dir),
        treatment_index=given(Artifact, index_dir),
        control_model=given(Model, model_dir),
        control_index=given(Artifact, index_dir),
        metrics=metrics,
        table=table,
        results=results,
    )
    text = Path(table.path).read_text()
    assert "| method | CT R@100 | QR R@100 | NDCG@4 |" in text
    assert "| CroPS vs NCE (relative) | +0.0 % | +0.0 % | +0.0 % |" in text
    assert {"bm25_ct_r_100", "nce_qr_r_100", "crops_graded_ndcg_4"} <= set(metrics.metadata)
    saved = json.loads(Path(results.path).read_text())
    assert list(saved["scores"]) == ["BM25", "NCE", "CroPS"]
    assert saved["results"]["CroPS"]["queries_run"] > 0
