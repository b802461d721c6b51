"""mine: the data engine (`crops mine`): cascade labels, reformulations, the recommendation
feed and LLM synthesis, graded by HLA into the samples table.

`crops mine` as a component (`crops.mining.mine.mine`): cascade labels from the search log,
query-reformulation and recommendation-feed positives through the relevance filter, LLM
synthesis for the queries with few positives, all graded by Hierarchical Label Assignment.

The API key is read from `CROPS_LLM_API_KEY` only. On a cluster the pipeline sets
`CROPS_LLM_ENDPOINT` and `CROPS_LLM_API_KEY` from the `crops-llm` Secret (keys `endpoint`,
`api-key`) with kfp-kubernetes `use_secret_as_env`. How depends on the pipeline's `synthesis`
build option (`crops pipeline compile --synthesis`):

- `endpoint` (the default): `llm_backend` defaults to `endpoint` on a cluster, `auto`
  locally; the Secret is required with `api-key`, its `endpoint` optional, since
  `llm_endpoint` or `serve_vllm` can give it instead;
- `vllm-offline`: `llm_backend` defaults to `vllm-offline`; the Secret is optional.
- `none`: `llm_backend` defaults to `none`; the Secret is not mounted.

With `llm_backend=endpoint` and no endpoint from any of the three, mine fails with a message
naming them; it never falls back to `knowledge` or `none`. `crops pipeline submit` checks the
Secret and its keys before the run starts (docs/kind.md).

**Where the synthesis happens.** The [serve_llm](../serve_llm/) task brings up the LLM server
(the vLLM Deployment and Service on a cluster) and hands its endpoint to mine; the LLM calls
happen here, because `crops.mining` runs synthesis inside `mine()`: the queries that get
synthetic videos are chosen from the positives the other miners found after the relevance
filter, and HLA assembles and de-duplicates every source into one samples table in the same
pass (the quality report judges the synthetic videos there too). The library exposes no step
that takes mined samples and adds synthetic ones, so splitting the calls out would
re-implement that orchestration rather than wrap it. The LLM itself is a separate service: the
vLLM server from serve_llm (or the Secret's endpoint), or, with `llm_backend=vllm-offline`,
vLLM in the mine task, which the pipeline then places on a GPU node
(`build_pipeline(synthesis="vllm-offline")`).
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mine(
    world: Input[Dataset],
    mined: Output[Dataset],
    metrics: Output[Metrics],
    llm_endpoint: str = "",
    llm_model: str = "",
    llm_backend: Optional[str] = None,  # noqa: UP045
    filter_model: Optional[str] = None,  # noqa: UP045
    relevance_threshold: Optional[float] = None,  # noqa: UP045 - kfp reads typing.Optional only
    level_filter: Optional[float] = None,  # noqa: UP045
    reformulation_window_s: Optional[float] = None,  # noqa: UP045
    synth_min_positives: int = -1,
    synth_max_queries: int = -1,
    synth_per_query: int = -1,
    synth_budget_s: float = 0.0,
    seed: int = -1,
) -> str:
    """Mine graded samples from the world's logs.

    Synthesis (perspective 3) runs inside mining: which queries get synthetic videos depends
    on the positives the other miners found, after the relevance filter.

    Args:
        world: videos, search_log and rec_log (a simulated world or ingested logs).
        mined: samples.parquet, synth_videos.parquet, report.json, _quarantine/, the LLM cache.
        metrics: samples by label and source, filter pass rates, quarantined rows, synthesis.
        llm_endpoint: an OpenAI-compatible server (vLLM), http://host:8000; empty: the
            CROPS_LLM_ENDPOINT variable (on a cluster, from the crops-llm Secret). The API key
            is read from CROPS_LLM_API_KEY, never from a parameter.
        llm_model: the model the server serves (or CROPS_LLM_MODEL); the Hugging Face model for
            vllm-offline.
        llm_backend: auto (the endpoint if one is set, else the local LLM server started
            here; the local pipeline's serve_llm task starts one and passes it) | endpoint (an
            LLM server is required: no endpoint is an error, never a fallback; the cluster
            pipeline's default) | local (the local LLM server; the endpoint instead when one is
            given) | knowledge (a named diagnostic: the simulator's world knowledge, not an LLM,
            never a default) | none | vllm-offline (vLLM's in-process engine on a GPU node) |
            ray-batch (Ray Data actors) | openai (as endpoint). The same resolution as `crops
            mine`'s: crops.mining.synthesis.factory.
        filter_model: the relevance filter: minilm | a sentence-transformers path | none.
        relevance_threshold: keep reformulation and recfeed candidates scoring above this, on
            the filter's (1 + cos) / 2 scale; unset: MineConfig's default.
        level_filter: an extension the paper does not make, off when unset: drop level samples
            (labels 1-3) scoring at or below this (same scale); needs a filter model.
        reformulation_window_s: a reformulation chain holds a user's queries this close to its
            first (s); unset: MineConfig's (the paper's 90 s). Set it from the gaps and yields
            that report.json's reformulation_window shows for your own logs.
        synth_min_positives: synthesise for queries with fewer positives than this; -1:
            MineConfig's (as for every -1 or unset setting here).
        synth_max_queries: at most this many queries get synthetic videos; -1: MineConfig's.
        synth_per_query: synthetic videos per query; -1: MineConfig's.
        synth_budget_s: stop sending synthesis requests after this long (0: no limit); the
            poorest queries go first, the rest are counted as skipped.
        seed: seed of the LLM requests and the knowledge backend; -1: MineConfig's.

    Returns:
        The synthesis backend that ran, and whether it is an LLM.
    """
    from pathlib import Path

    # the body runs alone in the task's container: it imports what it uses itself
    from crops.mining.config import MineConfig
    from crops.mining.mine import mine as run
    from crops.mining.synthesis.factory import build_backend, check_backend, resolve

    world_dir, out = Path(world.path), Path(mined.path)
    # unset parameters keep MineConfig's defaults (their one home)
    given = {
        "relevance_threshold": relevance_threshold,
        "level_filter": level_filter,
        "reformulation_window_s": reformulation_window_s,
        "filter_model": filter_model,
        "synth_min_positives": synth_min_positives,
        "synth_max_queries": synth_max_queries,
        "synth_per_query": synth_per_query,
        "llm_backend": None if llm_backend is None else check_backend(llm_backend),
        "seed": seed,
    }
    cfg = MineConfig(
        **{k: v for k, v in given.items() if v not in (None, -1)},
        synth_budget_s=synth_budget_s or None,
        llm_endpoint=llm_endpoint or None,
        llm_model=llm_model or None,
    )
    # the backend the parameters and CROPS_LLM_ENDPOINT / CROPS_LLM_MODEL (the Secret) name
    cfg = resolve(cfg)
    out.mkdir(parents=True, exist_ok=True)
    backend = build_backend(cfg, world=world_dir, cache=out / "llm_cache.sqlite", log_dir=out)
    from crops.mining.relevance import relevance_filter

    report = run(world_dir, out, cfg, backend, scorer=relevance_filter(cfg))

    s = report["samples"]
    metrics.log_metric("samples", s["rows"])
    metrics.log_metric("queries", s["queries"])
    for label, n in s["by_label"].items():
        metrics.log_metric(f"label_{label}", n)
    for source, n in s["by_source"].items():
        metrics.log_metric(f"source_{source}", n)
    for source in ("reformulation", "recfeed"):
        metrics.log_metric(f"{source}_pass_rate", report["filter"][source]["pass_rate"])
    metrics.log_metric("level_filter_dropped", report["level_filter"]["dropped"])
    for table, n in report["quarantined"].items():
        metrics.log_metric(f"quarantined_{table}", n)
    syn = report["synthesis"]
    metrics.log_metric("synthetic_videos", syn["videos"])
    metrics.log_metric("synthesis_is_llm", int(bool(syn["is_llm"])))
    mined.metadata.update(
        {"samples": s["rows"], "queries": s["queries"], "synthesis": syn["backend"]}
    )
    if "not an LLM" in syn["backend"]:  # the knowledge backend says so itself
        return syn["backend"]
    if syn["backend"] == "none":
        return "none (synthesis off)"
    return f"{syn['backend']} ({'an LLM' if syn['is_llm'] else 'not an LLM'})"
