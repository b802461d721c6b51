"""evaluate: the offline table (`crops evaluate`): Recall@100 on CT and QR, NDCG@4 graded.

The offline table (`crops.evaluate.offline`): the treatment (CroPS) and the control (the
click-only NCE model), each searched through its built index, and optionally BM25, scored on
the world's later-day test sets: Recall@100 on CT (clicked), Recall@100 on QR (consumed after a
reformulation), NDCG@4 on the graded set; plus the treatment's relative change over the control.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    world: Input[Dataset],
    treatment_model: Input[Model],
    treatment_index: Input[Artifact],
    control_model: Input[Model],
    control_index: Input[Artifact],
    metrics: Output[Metrics],
    table: Output[Markdown],
    results: Output[Artifact],
    treatment_name: str = "CroPS",
    control_name: str = "NCE",
    bm25: bool = True,
    k: int = 100,
):
    """Score both trained models through their built indexes on the world's test sets.

    Rows: BM25 (optional, the lexical baseline), the control and the treatment; columns: the
    paper's three numbers, and the treatment's relative change against the control.

    Args:
        world: a simulated world (tests/ with CT, QR and graded qrels).
        treatment_model: the model to ship (CroPS).
        treatment_index: its index folder.
        control_model: the model to beat (the click-only NCE model).
        control_index: its index folder.
        metrics: `<row>_<set>_<measure>` for every row, e.g. crops_ct_r_100.
        table: the table in Markdown.
        results: results.json: every row's full `crops evaluate` result.
        treatment_name: the treatment's row name.
        control_name: the control's row name.
        bm25: add the BM25 row.
        k: hits retrieved per query.
    """
    import json
    import re

    from crops.evaluate.collection import world_collection
    from crops.evaluate.experiment import COLUMNS
    from crops.evaluate.offline import BM25Searcher, headline, searcher_for
    from crops.evaluate.offline import evaluate as run

    collection = world_collection(world.path)
    rows = {}
    if bm25:
        rows["BM25"] = run(collection, BM25Searcher(collection.doc_ids, collection.doc_texts), k=k)
    for name, m, ix in (
        (control_name, control_model, control_index),
        (treatment_name, treatment_model, treatment_index),
    ):
        rows[name] = run(collection, searcher_for(collection, model=m.path, index=ix.path), k=k)
    scores = {name: headline(r) for name, r in rows.items()}

    head = "| method | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [f"# Offline retrieval on {world.metadata.get('scale', 'the')} world (%)", ""]
    lines += [head, "|---|" + "---:|" * len(COLUMNS)]
    for name, s in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * s[c]:.1f}" for c, _ in COLUMNS) + " |")
    base, new = scores[control_name], scores[treatment_name]
    change = [f"{100 * (new[c] / base[c] - 1):+.1f} %" if base[c] else "n/a" for c, _ in COLUMNS]
    lines.append(f"| {treatment_name} vs {control_name} (relative) | " + " | ".join(change) + " |")
    lines += [
        "",
        f"Recall@{k} on CT and QR, NDCG@4 on the graded set; dense rows search their built index.",
    ]
    with open(table.path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")

    for name, s in scores.items():
        for key, value in s.items():
            slug = re.sub(r"[^a-z0-9]+", "_", f"{name}_{key}".lower()).strip("_")
            metrics.log_metric(slug, value)
    with open(results.path, "w", encoding="utf-8") as fh:
        json.dump(
            {"columns": [list(c) for c in COLUMNS], "control": control_name,
             "treatment": treatment_name, "scores": scores, "results": rows},
            fh,
            indent=2,
        )  # fmt: skip
