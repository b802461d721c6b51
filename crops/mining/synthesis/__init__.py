"""Knowledge-level positives (docs/design.md section 1, perspective 3): LLM-synthesised videos.

An LLM, one-shot prompted as a short-video content expert, writes the metadata of a virtual
video (caption, tags, cover text, keywords, related queries) for a search query. These videos
become label-4 positives, reaching relevant content that no exposure log ever showed.

One job per module, imported top-down (each imports only the ones above it):

- `prompt`: PROMPT_VERSION, the versioned templates in crops/mining/prompts/, the messages;
- `reply`: the reply schema, SyntheticVideo, Failure and REASONS, parse_reply and
  parse_completions (the one verdict on a reply, whichever backend produced it), counters;
- `base`: SynthesisResult, the SynthesisBackend protocol, the shared assembly of results,
  and NoSynthesis (the clearly named backend without an LLM);
- `cache`: the SQLite reply cache and the lookup every LLM backend starts with;
- `openai_backend`: OpenAIChatBackend, the HTTP client of ``vllm serve``, llama.cpp's server
  (`crops.mining.llm_server` starts one locally) or any OpenAI-compatible endpoint;
- `engines`: in-process engines (vLLM on a GPU, llama.cpp on a CPU);
- `ray_batch`: BatchSynthesis, those engines in this process or on Ray Data actors;
- `knowledge`: KnowledgeBackend, the simulator's world knowledge (not an LLM, a diagnostic);
- `factory`: the one place settings become a backend (`build_backend`), for the CLI, the
  mine component and the RayJob alike.

This package re-exports the public names of prompt, reply, base, cache, openai_backend and
factory; engines, ray_batch and knowledge are imported from their modules (they pull heavier
dependencies).
"""

from crops.mining.synthesis.base import (
    NoSynthesis,
    Progress,
    SynthesisBackend,
    SynthesisResult,
)
from crops.mining.synthesis.cache import ReplyCache
from crops.mining.synthesis.factory import (
    BACKENDS,
    SynthesisSetupError,
    build_backend,
    check_backend,
    make_backend,
    resolve,
)
from crops.mining.synthesis.openai_backend import (
    GUIDED_MODES,
    SERVER_DIALECTS,
    OpenAIChatBackend,
    ServerDialect,
)
from crops.mining.synthesis.prompt import (
    PROMPT_VERSION,
    available_prompts,
    load_prompt,
    render_messages,
)
from crops.mining.synthesis.reply import (
    MAX_QUERY_BYTES,
    REASONS,
    USELESS,
    VIDEO_JSON_SCHEMA,
    Failure,
    SyntheticVideo,
    count_reply,
    new_reply_counters,
    parse_completions,
    parse_reply,
)

__all__ = [
    "BACKENDS",
    "GUIDED_MODES",
    "MAX_QUERY_BYTES",
    "PROMPT_VERSION",
    "REASONS",
    "SERVER_DIALECTS",
    "USELESS",
    "VIDEO_JSON_SCHEMA",
    "Failure",
    "NoSynthesis",
    "OpenAIChatBackend",
    "Progress",
    "ReplyCache",
    "ServerDialect",
    "SynthesisBackend",
    "SynthesisResult",
    "SynthesisSetupError",
    "SyntheticVideo",
    "available_prompts",
    "build_backend",
    "check_backend",
    "count_reply",
    "load_prompt",
    "make_backend",
    "new_reply_counters",
    "parse_completions",
    "parse_reply",
    "render_messages",
    "resolve",
]
