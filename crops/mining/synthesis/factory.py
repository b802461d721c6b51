"""The one backend factory for synthesis: which backend the settings name, and building it.

`crops mine` (and so the RayJob `python -m crops.ray_jobs.mine`) and the mine component read
the same settings (`crops.mining.config.MineConfig`) and the same environment, and both call
:func:`build_backend`; bad settings raise :class:`SynthesisSetupError`, whichever asked.

The environment fills what the settings leave unset (on a cluster, from the Secret crops-llm):
CROPS_LLM_ENDPOINT the server, CROPS_LLM_MODEL the model; the API key (CROPS_LLM_API_KEY) is
read by the HTTP client itself, never a setting. :func:`resolve`, by `llm_backend`:

- ``auto`` (the default): ``openai`` if an endpoint is given or set, else ``local``;
- ``endpoint``: ``openai``; no endpoint is an error naming the parameter, the variable and the
  Secret, never a fallback to another backend; ``openai`` is the same, by its resolved name;
- ``local``: llama.cpp's server started here; with an endpoint given, that server instead (one
  started for this run: the local pipeline's serve_llm task passes it);
- ``ray-batch``, ``vllm-offline``, ``knowledge``, ``none``: themselves; an endpoint given with
  them is an error (one set in the environment is ignored). vllm-offline, and ray-batch with
  the vllm engine, need a model; ray-batch with llama.cpp defaults to the packaged GGUF.

For ``openai`` without a model the server is asked (GET /v1/models, `llm_server.discover`),
which also tells its dialect (vLLM or llama.cpp). Only the knowledge backend reads the
simulator's truth, and only on a simulated world (world.json).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crops.mining.synthesis.base import NoSynthesis, SynthesisBackend
from crops.mining.synthesis.openai_backend import OpenAIChatBackend

if TYPE_CHECKING:
    from crops.mining.config import MineConfig

ENDPOINT_ENV, MODEL_ENV = "CROPS_LLM_ENDPOINT", "CROPS_LLM_MODEL"
#: The names `llm_backend` takes; the first two resolve to others (see the module docstring).
BACKENDS = ("auto", "endpoint", "openai", "local", "ray-batch", "vllm-offline", "knowledge", "none")
#: What :func:`resolve` leaves in `llm_backend`.
RESOLVED = ("openai", "local", "ray-batch", "vllm-offline", "knowledge", "none")
#: Backends that take no endpoint: one given with them is a contradiction.
NO_ENDPOINT = ("ray-batch", "vllm-offline", "knowledge", "none")

NO_ENDPOINT_MESSAGE = (
    "LLM synthesis was asked for (llm_backend={name}) but no LLM endpoint is set: the"
    " llm_endpoint parameter (--llm-endpoint) is empty (the serve_llm task serves vLLM only"
    " with serve_vllm=true) and CROPS_LLM_ENDPOINT is unset (on a cluster it comes from the"
    " key `endpoint` of the Secret crops-llm in the run's namespace, docs/kind.md)."
    " Set one of them, or compile with --synthesis none for a run without synthesis;"
    " nothing falls back to another backend."
)


class SynthesisSetupError(ValueError):
    """Settings that name no buildable synthesis backend; the message says what to change."""


def check_backend(name: str) -> str:
    """`name` if it is one of BACKENDS, else SynthesisSetupError naming them."""
    if name not in BACKENDS:
        raise SynthesisSetupError(f"llm_backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


def resolve(cfg: MineConfig, env: Mapping[str, str] | None = None) -> MineConfig:
    """`cfg` with `llm_backend` one of RESOLVED, the endpoint and model filled from `env`
    (default os.environ) where unset, and, for a server without a model, the model and
    dialect it reports. Idempotent: a resolved config comes back as it is."""
    env = os.environ if env is None else env
    name = check_backend(cfg.llm_backend)
    given = (cfg.llm_endpoint or "").strip() or None
    if given and name in NO_ENDPOINT:
        raise SynthesisSetupError(
            f"an LLM endpoint ({given}) and llm_backend {name}: give the endpoint"
            " (--llm-endpoint, with --llm-model) or --llm-backend, not both"
        )
    endpoint = given or (env.get(ENDPOINT_ENV) or "").strip() or None
    if name in ("auto", "endpoint", "openai") or (name == "local" and given):
        if endpoint is None and name == "auto":
            name = "local"
        elif endpoint is None:
            raise SynthesisSetupError(NO_ENDPOINT_MESSAGE.format(name=name))
        else:
            name = "openai"
    # CROPS_LLM_MODEL names what a deployment's server serves; llama.cpp (the local server, or
    # ray-batch's llama.cpp engine) takes a GGUF path, so only an explicit llm_model reaches it
    gguf = name == "local" or (name == "ray-batch" and cfg.llm_engine == "llama.cpp")
    model = cfg.llm_model or (None if gguf else env.get(MODEL_ENV)) or None
    update: dict[str, Any] = {"llm_backend": name, "llm_model": model}
    if name == "openai":
        update["llm_endpoint"] = endpoint
        if model is None:  # a server started for this run (serve_llm): ask what it serves
            update["llm_model"], update["llm_server"] = _discover(endpoint)
    elif name == "vllm-offline" and model is None:
        raise SynthesisSetupError(
            "--llm-backend vllm-offline needs --llm-model (llm_model, or CROPS_LLM_MODEL):"
            " a Hugging Face model name or path"
        )
    elif name == "ray-batch" and model is None and cfg.llm_engine == "vllm":
        raise SynthesisSetupError(
            "--llm-backend ray-batch with the vllm engine needs --llm-model (llm_model, or"
            " CROPS_LLM_MODEL): a Hugging Face model name or path"
        )
    return cfg.model_copy(update=update)


def _discover(endpoint: str) -> tuple[str, str]:
    from crops.mining.llm_server import discover

    try:
        return discover(endpoint)
    except Exception as exc:  # unreachable, not a server, no model: all say the same
        raise SynthesisSetupError(
            f"the LLM endpoint {endpoint} needs --llm-model (llm_model, or CROPS_LLM_MODEL):"
            f" asking the server which model it serves (GET /v1/models) failed:"
            f" {type(exc).__name__}: {exc}"
        ) from exc


def build_backend(
    cfg: MineConfig,
    *,
    world: str | Path,
    cache: str | Path | None,
    log_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> SynthesisBackend:
    """The synthesis backend `cfg` names (resolved first, see :func:`resolve`).

    `world` is the mined world's folder (the knowledge backend reads it), `cache` the SQLite
    reply cache (None: none), `log_dir` where a local LLM server writes its log (default: the
    cache's folder). Raises SynthesisSetupError for bad settings, a missing package or model.
    """
    cfg = resolve(cfg, env)
    name = cfg.llm_backend
    try:
        return _build(cfg, name, Path(world), cache, log_dir)
    except SynthesisSetupError:
        raise
    except (ValueError, ImportError, FileNotFoundError) as exc:
        raise SynthesisSetupError(str(exc)) from exc


def _build(
    cfg: MineConfig,
    name: str,
    world: Path,
    cache: str | Path | None,
    log_dir: str | Path | None,
) -> SynthesisBackend:
    if name == "openai":
        return OpenAIChatBackend(
            cfg.llm_endpoint,
            cfg.llm_model,
            concurrency=cfg.llm_concurrency,
            timeout_s=cfg.llm_timeout_s,
            max_retries=cfg.llm_max_retries,
            cache_path=cache,
            seed=cfg.seed,
            server=cfg.llm_server,
            budget_s=cfg.synth_budget_s,
        )
    if name == "local":
        from crops.mining.llm_server import LocalLLMBackend

        if log_dir is None:
            log_dir = Path(cache).parent if cache is not None else Path.cwd()
        return LocalLLMBackend(
            cfg.llm_model,
            log_dir=log_dir,
            cache_path=cache,
            seed=cfg.seed,
            max_retries=cfg.llm_max_retries,
            budget_s=cfg.synth_budget_s,
        )
    if name == "vllm-offline":
        from crops.mining.synthesis.ray_batch import vllm_offline

        return vllm_offline(cfg.llm_model, cache_path=cache, seed=cfg.seed)
    if name == "ray-batch":
        from crops.mining.synthesis.engines import EngineSpec
        from crops.mining.synthesis.ray_batch import BatchSynthesis

        model = cfg.llm_model
        if model is None:  # resolve() let only llama.cpp through without one
            from crops.mining.llm_server import packaged_model

            model = str(packaged_model())
        return BatchSynthesis(
            EngineSpec(engine=cfg.llm_engine, model=model),
            runner="ray",
            actors=cfg.llm_actors,
            gpus_per_actor=cfg.llm_gpus_per_actor,
            batch_size=cfg.llm_batch_size,
            seed=cfg.seed,
            max_retries=cfg.llm_max_retries,
            cache_path=cache,
        )
    if name == "knowledge":
        if not (world / "world.json").is_file():
            raise SynthesisSetupError(
                f"--world {world} is not a simulated world (no world.json): the knowledge"
                " backend (the simulator's truth, a diagnostic) needs one; give an LLM endpoint"
                " or --llm-backend none"
            )
        from crops.mining.synthesis.knowledge import KnowledgeBackend
        from crops.world.world import World

        return KnowledgeBackend(World.load(world), seed=cfg.seed)
    return NoSynthesis()


def make_backend(endpoint: str | None, model: str | None = None, **kwargs: Any) -> SynthesisBackend:
    """OpenAIChatBackend when an endpoint is given, else the clearly named NoSynthesis: the
    HTTP client alone, for scripts and benchmarks (mining builds through build_backend)."""
    if not endpoint:
        return NoSynthesis()
    if not model:
        raise ValueError(f"an LLM endpoint ({endpoint}) needs a model name")
    return OpenAIChatBackend(endpoint, model, **kwargs)
