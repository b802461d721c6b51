"""Encoders: hashed n-gram tower, Hugging Face towers (real MiniLM, tiny random BERT), save/load."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crops.lexical import CJK_DEFAULT, CJK_MODES
from crops.model.encoders import (
    HASHER_V1,
    MANIFEST,
    BucketIds,
    DualEncoder,
    HashTower,
    HFTower,
    Tower,
    _ngram_groups,
    build_dual_encoder,
    normalize_text,
)
from crops.model.names import minilm_path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CROPS_SHARED", REPO.parent / "shared"))
KUAIREC = SHARED / "data" / "kuairec" / "kuairec_caption_category.csv"
TEXTS = ["funny cat video", "how to cook rice", "精神小伙路难走", "晚饭后，运动一下！", ""]


def small_hash(seed: int = 0, dim: int = 32) -> HashTower:
    return HashTower(dim=dim, buckets=2**12, hidden=48, seed=seed)


def info_nce(q: torch.Tensor, d: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    logits = q @ d.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q)))


@pytest.fixture(scope="session")
def kuairec_rows() -> list[dict[str, str]]:
    assert KUAIREC.is_file(), (
        f"KuaiRec captions not found at {KUAIREC}: the tests read ../shared/data beside the"
        " repository (or set CROPS_SHARED to the shared folder)"
    )
    with KUAIREC.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return [row for _, row in zip(range(200), reader, strict=False)]


@pytest.fixture(scope="session")
def minilm() -> HFTower:
    return HFTower("minilm").eval()


@pytest.fixture(scope="session")
def tokenizer(minilm: HFTower):
    return minilm.tokenizer


def tiny_bert(tokenizer, seed: int = 0, pooling: str = "mean") -> HFTower:
    from transformers import BertConfig

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=len(tokenizer),
    )
    torch.manual_seed(seed)
    return HFTower.from_config(config, tokenizer, pooling=pooling, max_length=32)


# ------------------------------------------------------------------------------ hash tower


def test_hash_tower_deterministic_unit_norm_and_distinct() -> None:
    a, b = small_hash(seed=3), small_hash(seed=3)
    ea, eb = a(TEXTS), b(TEXTS)
    assert isinstance(a, Tower) and ea.shape == (len(TEXTS), 32)
    assert torch.equal(ea, eb)
    assert a.bucket_ids("精神小伙") == b.bucket_ids("精神小伙")
    torch.testing.assert_close(ea.norm(dim=-1), torch.ones(len(TEXTS)))
    # different texts, different embeddings (all pairs)
    cos = ea @ ea.T
    assert (cos - torch.eye(len(TEXTS))).max() < 0.999
    # another seed hashes and initialises differently
    c = small_hash(seed=4)
    assert c.bucket_ids("精神小伙") != a.bucket_ids("精神小伙")
    assert not torch.allclose(c(TEXTS), ea)


def test_hash_features_normalised_and_empty_bucket() -> None:
    t = small_hash()
    # NFKC + casefold: full-width Latin and upper case map to the same features
    assert t.bucket_ids("ＨＥＬＬＯ  World") == t.bucket_ids("hello world")
    assert t.bucket_ids("") == [t.buckets] == t.bucket_ids("   ")
    assert all(0 <= i < t.buckets for i in t.bucket_ids("晚饭后，运动一下！ abc"))
    e = t(["", "x"])
    assert torch.isfinite(e).all() and e.norm(dim=-1).allclose(torch.ones(2))
    assert t([]).shape == (0, 32)
    # the empty bucket is learned: it receives gradient
    t([""]).sum().backward()
    assert t.embedding.weight.grad[t.buckets].abs().sum() > 0


def test_hash_ids_stable_across_processes() -> None:
    text = "精神小伙路难走 程哥你狗粮慢点撒 Hello World"
    code = (
        "from crops.model.encoders import HashTower\n"
        "t = HashTower(dim=8, buckets=2**12, hidden=8, seed=7)\n"
        f"print(t.bucket_ids({text!r}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    here = HashTower(dim=8, buckets=2**12, hidden=8, seed=7).bucket_ids(text)
    assert json.loads(out.stdout.strip()) == here
    assert len(here) > 20


@pytest.mark.parametrize(
    "settings",
    [{}, {"char_ngrams": (2, 2, 4), "word_ngrams": (), "seed": 3}, {"char_ngrams": ()}],
)
def test_bucket_table_equals_per_text_ids(kuairec_rows, settings) -> None:
    """The corpus table (each distinct n-gram hashed once) gives every text's bucket_ids, in
    order, and a gathered batch encodes as the texts do."""
    texts = [*TEXTS, "   ", "a", "ＨＥＬＬＯ  World", *(r["caption"] for r in kuairec_rows[:60])]
    texts += texts[:5]  # repeats
    t = HashTower(dim=16, buckets=2**12, hidden=16, **settings)
    table = t.bucket_table(texts)
    assert len(table) == len(texts) and table.ids.dtype == np.int32
    for i, text in enumerate(texts):
        assert table.ids[table.offsets[i] : table.offsets[i + 1]].tolist() == t.bucket_ids(text)
    index = np.array([7, 0, 4, 4, len(texts) - 1, 2])
    flat, offsets = table.take(index)
    assert flat.tolist() == sum((t.bucket_ids(texts[i]) for i in index), [])
    assert (
        offsets.tolist()
        == np.cumsum([0] + [len(t.bucket_ids(texts[i])) for i in index[:-1]]).tolist()
    )
    with torch.no_grad():
        expected = t([texts[i] for i in index])
        torch.testing.assert_close(t(table.bucket_ids(index)), expected)
        # a slice of the table holding the rows the ids touch, with the ids remapped into it
        rows, position = np.unique(flat, return_inverse=True)
        sub = t.embedding.weight[torch.from_numpy(rows)]
        remapped = BucketIds(torch.from_numpy(position), torch.from_numpy(offsets), sub)
        torch.testing.assert_close(t(remapped), expected)
        assert t(table.bucket_ids(index[:0])).shape == (0, 16)


def test_hash_tower_on_kuairec_captions_and_learns(kuairec_rows) -> None:
    all_captions = [r["caption"] for r in kuairec_rows]  # some are empty
    assert len(all_captions) == 200
    assert any("\u4e00" <= ch <= "\u9fff" for c in all_captions for ch in c)  # real Chinese
    model = DualEncoder(small_hash(seed=1, dim=64))
    emb = model.embed(all_captions, side="doc", batch_size=64)
    assert emb.dtype == np.float32 and emb.shape == (200, 64)
    assert np.isfinite(emb).all() and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)

    rows = [r for r in kuairec_rows if r["first_level_category_name"] not in ("", "UNKNOWN")]
    captions = [r["caption"] for r in rows]

    # toy pairs: caption -> its first-level category name; 30 steps of in-batch InfoNCE
    cats = [r["first_level_category_name"] for r in rows]
    same = torch.tensor([[a == b for b in cats] for a in cats])

    def margin() -> float:
        q = torch.from_numpy(model.embed(captions, side="query"))
        d = torch.from_numpy(model.embed(cats, side="doc"))
        cos = q @ d.T
        return float(cos[same].mean() - cos[~same].mean())

    before = margin()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        idx = torch.randperm(len(rows), generator=gen)[:64].tolist()
        q, d = model([captions[i] for i in idx], [cats[i] for i in idx])
        logits = q @ d.T / 0.05
        logits = logits.masked_fill(
            same[idx][:, idx] & ~torch.eye(len(idx), dtype=torch.bool), -1e4
        )
        loss = F.cross_entropy(logits, torch.arange(len(idx)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = margin()
    assert after > before + 0.1, (before, after)


# ------------------------------------------------------------- hash tower on unsegmented CJK

QBQTC = SHARED / "data" / "qbqtc-train" / "train.json"


def word_ids(tower: HashTower, text: str) -> set[int]:
    """The bucket ids of `text`'s word n-grams only (a twin tower without char n-grams)."""
    words = HashTower(
        dim=8,
        buckets=tower.buckets,
        hidden=8,
        char_ngrams=(),
        word_ngrams=tower.word_ngrams,
        seed=tower.seed,
        cjk_words=tower.cjk_words,
    )
    return set(words.bucket_ids(text))


def test_hash_word_grams_cut_chinese_runs() -> None:
    title = "红烧肉的家常做法视频"
    groups = dict(_ngram_groups(normalize_text(title), (), (1, 2), CJK_DEFAULT))
    assert len(set(groups["w1"])) >= 5 and len(set(groups["w2"])) >= 5
    assert dict(_ngram_groups(title, (), (1, 2), "none")) == {"w1": [title], "w2": []}
    # two titles sharing a word share word-gram buckets; an unrelated one does not
    t = HashTower(buckets=2**16)
    a, b = word_ids(t, title), word_ids(t, "家常红烧肉，好吃不腻")
    assert a & b and not a & word_ids(t, "三江汇流旅游攻略")
    legacy = HashTower(buckets=2**16, cjk_words="none")
    assert not word_ids(legacy, title) & word_ids(legacy, "家常红烧肉，好吃不腻")


def test_hash_ids_of_text_without_cjk_unchanged() -> None:
    """English (and any text without CJK characters) hashes exactly as the whitespace words
    of hasher v1 did, so English bucket ids and saved English models are unchanged."""
    texts = ["funny cat video", "How to cook rice, fast!", "ＨＥＬＬＯ  World", "", "café ß"]
    for mode in CJK_MODES:
        new, legacy = HashTower(cjk_words=mode), HashTower(cjk_words="none")
        assert [new.bucket_ids(x) for x in texts] == [legacy.bucket_ids(x) for x in texts]
    assert HashTower().bucket_ids("精神小伙") != HashTower(cjk_words="none").bucket_ids("精神小伙")
    with pytest.raises(ValueError, match="cjk_words must be one of"):
        HashTower(cjk_words="words")  # type: ignore[arg-type]


def test_hash_v1_folder_loads_with_whitespace_words(tmp_path: Path) -> None:
    model = DualEncoder(HashTower(dim=16, buckets=2**12, hidden=16, seed=2, cjk_words="none"))
    model.save(tmp_path / "v1")
    path = tmp_path / "v1" / MANIFEST
    manifest = json.loads(path.read_text())
    assert manifest["towers"]["query"]["cjk_words"] == "none"
    del manifest["towers"]["query"]["cjk_words"]  # what a v1 folder holds
    manifest["towers"]["query"]["hasher"] = HASHER_V1
    path.write_text(json.dumps(manifest))
    loaded = DualEncoder.load(tmp_path / "v1")
    assert loaded.query_tower.cjk_words == "none"
    np.testing.assert_array_equal(loaded.embed(TEXTS, side="doc"), model.embed(TEXTS, side="doc"))
    manifest["towers"]["query"]["hasher"] = "nfkc-casefold/blake2b-64/v0"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="hasher 'nfkc-casefold/blake2b-64/v0'"):
        DualEncoder.load(tmp_path / "v1")


def test_hash_tower_learns_chinese_query_title_pairs() -> None:
    """Real qbqtc pairs (grade 2), a tower of word grams only (no char n-grams): a short
    in-batch training ranks each training query's title first, and on 24 unseen pairs the
    shared words still find the title well above chance (whitespace words: chance, 1/24)."""
    assert QBQTC.is_file(), f"qbqtc not found at {QBQTC} (set CROPS_SHARED to the shared folder)"
    pairs: dict[str, str] = {}
    with QBQTC.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["relevant"] == "2" and row["query"] not in pairs:
                pairs[row["query"]] = row["title"]
            if len(pairs) == 48:
                break
    queries, titles = list(pairs), list(pairs.values())
    model = DualEncoder(HashTower(dim=32, buckets=2**14, hidden=32, char_ngrams=(), seed=1))

    def top1(part: slice) -> float:
        q = model.embed(queries[part], side="query")
        d = model.embed(titles[part], side="doc")
        return float(((q @ d.T).argmax(axis=1) == np.arange(len(q))).mean())

    train, unseen = slice(0, 24), slice(24, 48)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        q, d = model(queries[train], titles[train])
        loss = info_nce(q, d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert top1(train) >= 0.9
    assert top1(unseen) >= 0.2


# ----------------------------------------------------------------------- Hugging Face tower


def test_minilm_matches_sentence_transformers(minilm: HFTower) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [t for t in TEXTS if t] + ["a much longer sentence about short video search " * 3]
    ours = DualEncoder(minilm).embed(texts, side="doc")
    st = SentenceTransformer(minilm_path(), device="cpu")
    ref = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    assert ours.shape == ref.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_minilm_cls_pooling_differs(minilm: HFTower) -> None:
    cls = HFTower._from_parts(minilm.model, minilm.tokenizer, "minilm", "cls", 128, True)
    with torch.no_grad():
        mean_emb, cls_emb = minilm(TEXTS[:3]), cls(TEXTS[:3])
    torch.testing.assert_close(cls_emb.norm(dim=-1), torch.ones(3))
    assert (mean_emb - cls_emb).abs().max() > 1e-2
    assert build_dual_encoder("hf:minilm", pooling="cls").query_tower.pooling == "cls"


def test_tiny_random_bert_trains(tokenizer) -> None:
    model = DualEncoder(tiny_bert(tokenizer))
    assert model.dim == 32 and model.query_tower.spec == "hf:config:bert"
    queries = ["cat", "rice recipe", "football goal", "精神小伙", "sunset beach", "piano cover"]
    docs = [
        "funny cat video",
        "how to cook rice",
        "best goals",
        "小伙路难走",
        "beach at dusk",
        "music",
    ]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(8):
        q, d = model(queries, docs)
        loss = info_nce(q, d, temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(p.grad is not None for p in model.parameters())  # no unused params (DDP-safe)


# ---------------------------------------------------------------- shared vs separate towers


def test_shared_and_separate_towers() -> None:
    shared = build_dual_encoder("hash", dim=16, seed=2)
    assert shared.shared and shared.query_tower is shared.doc_tower
    assert np.array_equal(shared.embed(TEXTS, side="query"), shared.embed(TEXTS, side="doc"))
    n = sum(p.numel() for p in shared.parameters())
    assert n == sum(p.numel() for p in shared.query_tower.parameters())

    sep = build_dual_encoder("hash", dim=16, seed=2, shared=False)
    assert not sep.shared and sep.query_tower is not sep.doc_tower
    q_params = {id(p) for p in sep.query_tower.parameters()}
    assert q_params.isdisjoint(id(p) for p in sep.doc_tower.parameters())
    assert sum(p.numel() for p in sep.parameters()) == 2 * n
    with torch.no_grad():
        sep.doc_tower.mlp[2].weight.add_(0.5)
    q, d = sep.embed(TEXTS, side="query"), sep.embed(TEXTS, side="doc")
    assert np.abs(q - d).max() > 1e-3
    # perturbing the doc tower left the query tower alone
    assert np.array_equal(q, shared.embed(TEXTS, side="query"))
    with pytest.raises(ValueError, match="dims differ"):
        DualEncoder(small_hash(dim=8), small_hash(dim=16))


# ----------------------------------------------------------------------------- save / load


def _assert_round_trip(model: DualEncoder, folder: Path) -> DualEncoder:
    model.save(folder)
    loaded = DualEncoder.load(folder)
    assert loaded.shared == model.shared and loaded.dim == model.dim
    for side in ("query", "doc"):
        np.testing.assert_array_equal(
            loaded.embed(TEXTS, side=side), model.embed(TEXTS, side=side), err_msg=side
        )
    return loaded


@pytest.mark.parametrize("shared", [True, False])
def test_hash_save_load_round_trip(tmp_path: Path, shared: bool) -> None:
    model = DualEncoder(small_hash(seed=5), None if shared else small_hash(seed=6))
    _assert_round_trip(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["encoder"] == "hash" and manifest["shared"] is shared
    assert manifest["towers"]["query"]["buckets"] == 2**12
    assert manifest["towers"]["query"]["seed"] == 5
    assert (tmp_path / "m" / "doc.safetensors").exists() is not shared


@pytest.mark.parametrize("shared", [True, False])
def test_tiny_bert_save_load_round_trip(tmp_path: Path, tokenizer, shared: bool) -> None:
    q = tiny_bert(tokenizer, seed=1, pooling="cls")
    model = DualEncoder(q, None if shared else tiny_bert(tokenizer, seed=2, pooling="cls"))
    loaded = _assert_round_trip(model, tmp_path / "m")
    assert loaded.query_tower.pooling == "cls" and loaded.query_tower.max_length == 32
    for name in ["query"] + ([] if shared else ["doc"]):
        assert (tmp_path / "m" / name / "config.json").is_file()
        assert (tmp_path / "m" / name / "tokenizer_config.json").is_file()
    assert (tmp_path / "m" / "doc").exists() is not shared


def test_saved_hf_folder_loads_offline_after_source_is_gone(
    tmp_path: Path, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a throwaway "pretrained" folder: tiny BERT + MiniLM tokenizer
    src = tmp_path / "src"
    tiny = tiny_bert(tokenizer, seed=3)
    tiny.model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    model = build_dual_encoder(f"hf:{src}", shared=False, max_length=16)
    assert model.query_tower.spec == f"hf:{src}" and model.dim == 32
    expected = {s: model.embed(TEXTS, side=s) for s in ("query", "doc")}
    model.save(tmp_path / "out")
    shutil.rmtree(src)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    loaded = DualEncoder.load(tmp_path / "out")
    for s in ("query", "doc"):
        np.testing.assert_array_equal(loaded.embed(TEXTS, side=s), expected[s])
    assert loaded.query_tower.max_length == 16


def test_load_errors_name_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not-a-model"):
        DualEncoder.load(empty)
    folder = tmp_path / "future"
    DualEncoder(small_hash()).save(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format_version"] = 999
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="future.*999"):
        DualEncoder.load(folder)


@pytest.mark.parametrize("spec", ["", "bm25", "hf:", "HASH", "hashx"])
def test_build_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        build_dual_encoder(spec)


def _checkpoint(folder: Path, model_type: str, keys: list[str], weights: bool = True) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        save_file({k: torch.zeros(1) for k in keys}, str(folder / "model.safetensors"))
    return folder


def test_a_pooler_is_left_out_only_where_the_checkpoint_has_none(tmp_path: Path) -> None:
    """`add_pooling_layer=False` for a BERT checkpoint without pooler weights; a checkpoint
    with one, without a safetensors file, or of a type that maps to several model classes
    (Funnel) or takes no such flag (DistilBERT) loads as saved."""
    from crops.model.encoders import _absent_pooler

    bare = _checkpoint(tmp_path / "bare", "bert", ["embeddings.word_embeddings.weight"])
    assert _absent_pooler(bare) == {"add_pooling_layer": False}
    pooled = _checkpoint(tmp_path / "pooled", "bert", ["bert.pooler.dense.weight"])
    assert _absent_pooler(pooled) == {}
    assert _absent_pooler(_checkpoint(tmp_path / "bin", "bert", [], weights=False)) == {}
    assert _absent_pooler(_checkpoint(tmp_path / "funnel", "funnel", ["x"])) == {}
    assert _absent_pooler(_checkpoint(tmp_path / "distil", "distilbert", ["x"])) == {}
