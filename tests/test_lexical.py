"""crops.lexical: CJK runs segmented for BM25; text without CJK tokenized exactly as plain bm25s."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest

from crops.lexical import (
    CJK_DEFAULT,
    CJK_MODES,
    bm25_index,
    bm25_retrieve,
    cjk_segments,
    prepare,
    split_word,
    tokenize,
)
from crops.world.platform import video_text
from crops.world.world import World

ENGLISH = [
    "How to cook rice in a rice cooker",
    "funny cat video, cats & dogs!",
    "The quick brown fox's 2nd jump (HD) - 4K_60fps",
    "café naïve résumé — Ünïcode ß ﬁ ligature ² ①",
    "",
    "   ",
    "a I x",
]
TITLES = ["三江汇流旅游攻略", "红烧肉的家常做法", "猫咪搞笑视频合集", "iPhone 15 手机评测"]


def strings(tokens) -> list[list[str]]:
    inverse = {i: w for w, i in tokens.vocab.items()}
    return [[inverse[i] for i in row] for row in tokens.ids]


def plain(texts: list[str], stopwords: str | None = "en"):
    return bm25s.tokenize(texts, stopwords=stopwords, show_progress=False)


@pytest.mark.parametrize("cjk", CJK_MODES)
@pytest.mark.parametrize("stopwords", ["en", None])
def test_english_tokens_identical_to_plain_bm25s(tiny_world: World, cjk, stopwords) -> None:
    texts = ENGLISH + video_text(tiny_world.videos) + list(tiny_world.forms.text)
    ours = tokenize(texts, stopwords=stopwords, cjk=cjk)
    theirs = plain(texts, stopwords)
    assert ours.ids == theirs.ids and ours.vocab == theirs.vocab
    assert all(prepare(t, cjk) == t for t in texts)


def test_english_retrieval_identical_to_plain_bm25s(tiny_world: World) -> None:
    """The simulator's lexical channel: same index, same rows and scores as before."""
    docs, queries = video_text(tiny_world.videos), list(tiny_world.forms.text)
    model = bm25_index(docs)
    rows, scores = bm25_retrieve(model, queries, 50)
    ref = bm25s.BM25()
    ref.index(plain(docs), show_progress=False)
    ref_rows, ref_scores = ref.retrieve(plain(queries), k=50, show_progress=False, n_threads=1)
    assert np.array_equal(rows, ref_rows) and np.array_equal(scores, ref_scores)
    assert (scores[:, 0] > 0).mean() > 0.9  # real matches, not all-zero ties


def test_chinese_query_finds_the_title_sharing_its_words() -> None:
    model = bm25_index(TITLES)
    rows, scores = bm25_retrieve(model, ["红烧肉怎么做", "搞笑猫咪", "三江汇流是哪三江"], 2)
    assert rows[:, 0].tolist() == [1, 2, 0]
    assert (scores[:, 0] > 0).all()
    # the reference pattern sees each title as one token: no match at all
    none = bm25_index(TITLES, cjk="none")
    _, none_scores = bm25_retrieve(none, ["红烧肉怎么做"], 2, cjk="none")
    assert (none_scores == 0).all()


@pytest.mark.parametrize("cjk", [m for m in CJK_MODES if m != "none"])
def test_every_mode_retrieves_chinese(cjk) -> None:
    model = bm25_index(TITLES, cjk=cjk)
    rows, scores = bm25_retrieve(model, ["红烧肉的做法"], 1, cjk=cjk)
    assert rows[0, 0] == 1 and scores[0, 0] > 0


def test_segments_per_mode() -> None:
    assert cjk_segments("三江汇流", "bigram") == ["三江", "江汇", "汇流"]
    assert cjk_segments("三江汇", "unigram+bigram") == ["三", "三江", "江", "江汇", "汇"]
    assert cjk_segments("红烧肉的家常做法", "jieba") == ["红烧肉", "的", "家常", "做法"]
    words = cjk_segments("红烧肉做法", "jieba+bigram")
    assert "红烧肉" in words and "肉做" in words
    assert cjk_segments("猫", "bigram") == ["猫"]  # a one-character run stays a unigram
    assert cjk_segments("猫", "unigram+bigram") == ["猫"]
    with pytest.raises(ValueError, match="unknown CJK mode 'words'"):
        cjk_segments("猫", "words")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown CJK mode"):
        tokenize(["猫"], cjk="words")  # type: ignore[arg-type]


def test_mixed_chinese_and_english() -> None:
    tokens = strings(tokenize(["iPhone15手机评测 the best phone 我"], cjk="bigram"))[0]
    # Latin words split off the CJK run, English stop words still removed
    assert tokens == ["iphone15", "手机", "机评", "评测", "best", "phone", "我"]
    model = bm25_index(TITLES)
    rows, _ = bm25_retrieve(model, ["iphone 手机"], 1)
    assert rows[0, 0] == 3


def test_full_width_forms_fold_to_ascii() -> None:
    full = "ＩＰＨＯＮＥ　１５，手机！"
    assert prepare(full, "bigram") == "IPHONE 15, 手机 !"
    assert strings(tokenize([full]))[0] == strings(tokenize(["iphone 15 手机"]))[0]
    model = bm25_index(TITLES)
    rows, scores = bm25_retrieve(model, ["ｉＰｈｏｎｅ"], 1)
    assert rows[0, 0] == 3 and scores[0, 0] > 0


def test_single_character_run_and_empty_text() -> None:
    tokens = strings(tokenize(["猫", "", "a 狗 b", "。"]))
    assert tokens == [["猫"], [], ["狗"], []]
    model = bm25_index(["猫", "狗", ""])
    rows, scores = bm25_retrieve(model, ["猫", ""], 1)
    assert rows[0, 0] == 0 and scores[0, 0] > 0
    assert scores[1, 0] == 0  # an empty query matches nothing, and does not fail


def test_kana_and_hangul_runs_are_cut_too() -> None:
    tokens = strings(tokenize(["ラーメンの作り方", "한국어 검색"], cjk="bigram"))
    assert "ラー" in tokens[0] and "作り" in tokens[0]
    assert tokens[1] == ["한국", "국어", "검색"]


def test_split_word_keeps_words_without_cjk() -> None:
    assert split_word("hello,", CJK_DEFAULT) == ["hello,"]
    assert split_word("晚饭后,运动!", "bigram") == ["晚饭", "饭后", ",", "运动", "!"]
    assert split_word("晚饭后", "none") == ["晚饭后"]


def test_chinese_stop_words_are_optional_and_cjk_only() -> None:
    text = ["我的猫 the cat"]
    kept = strings(tokenize(text, cjk="jieba"))[0]
    stopped = strings(tokenize(text, cjk="jieba", cjk_stopwords=True))[0]
    assert "的" in kept and "的" not in stopped and "cat" in stopped and "the" not in stopped
