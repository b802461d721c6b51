"""The synthesis prompt: its version, the versioned template files, and the chat messages.

Owns PROMPT_VERSION and the templates in `crops/mining/prompts/` (package data, one
``<version>.txt`` per prompt, so a cached reply names the prompt that produced it): loading and
checking a template (:func:`load_prompt`) and rendering it for one query
(:func:`render_messages`), with the query quoted so it can never escape into the instructions.
"""

from __future__ import annotations

import importlib.resources
import json
import re

PROMPT_VERSION = "synthesis_v1"

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECTION_RE = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


def _prompt_dir():
    # the templates stay in crops/mining/prompts/ (package data `mining/prompts/*.txt`)
    return importlib.resources.files("crops.mining").joinpath("prompts")


def available_prompts() -> list[str]:
    """Prompt versions shipped with the package (for error messages and CLIs)."""
    return sorted(
        p.name[: -len(".txt")] for p in _prompt_dir().iterdir() if p.name.endswith(".txt")
    )


def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The prompt template of `version`; versioned files so cached replies name their prompt."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"invalid prompt version {version!r}: expected a name like 'synthesis_v1'")
    res = _prompt_dir().joinpath(f"{version}.txt")
    if not res.is_file():
        raise ValueError(
            f"unknown prompt version {version!r}; available: {', '.join(available_prompts())}"
        )
    text = res.read_text(encoding="utf-8")
    _split_prompt(text, version)  # fail at load time, not at the first query
    return text


def _split_prompt(prompt: str, version: str = "prompt") -> tuple[str, str]:
    lines = prompt.splitlines()
    if lines and lines[0].startswith("#"):
        lines = lines[1:]  # the version comment is for humans, not for the model
    body = "\n".join(lines)
    parts = _SECTION_RE.split(body)
    # parts: [preamble, "system", text, "user", text]
    if len(parts) != 5 or parts[1] != "system" or parts[3] != "user" or parts[0].strip():
        raise ValueError(f"{version}: template needs a [system] section then a [user] section")
    system, user = parts[2].strip(), parts[4].strip()
    if user.count("{query}") != 1 or "{query}" in system:
        raise ValueError(f"{version}: the [user] section needs exactly one {{query}} placeholder")
    return system, user


def _encode_query(query: str) -> str:
    """JSON string literal with <, > and & escaped, so the query can never close its delimiter."""
    s = json.dumps(query, ensure_ascii=False)
    return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_messages(query: str, prompt: str) -> list[dict[str, str]]:
    """System and user chat messages for `query`.

    The query goes in as a JSON string literal between <query> markers, by plain replacement
    (no str.format), so braces, quotes, newlines or a fake closing marker in a query can neither
    break the template nor escape into the instructions.
    """
    system, user = _split_prompt(prompt)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user.replace("{query}", _encode_query(query), 1)},
    ]
