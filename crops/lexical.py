"""BM25 (bm25s), one way for the whole project: the simulator's lexical channel, the BM25
baseline and DPR's hard negatives all index and retrieve through these two functions.

It also owns the one CJK segmentation (also the hash encoder's word n-grams): bm25s's token
pattern makes an unsegmented Chinese title one token, so each run of CJK characters (Han, kana,
hangul) is cut into character bigrams, unigrams + bigrams, jieba words or jieba words +
bigrams before bm25s tokenizes. Text without CJK characters is tokenized exactly as plain
``bm25s.tokenize(texts, stopwords="en")`` does (tests/test_lexical.py proves it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal, get_args

import numpy as np

#: How a CJK run is cut: "none" is bm25s's own pattern (a run is one token); "bigram":
#: overlapping character pairs, a one-character run kept as it is; "unigram+bigram": every
#: character and every pair; "jieba": jieba's words; "jieba+bigram": jieba's words and the pairs.
CJKMode = Literal["none", "bigram", "unigram+bigram", "jieba", "jieba+bigram"]
CJK_MODES: tuple[str, ...] = get_args(CJKMode)
#: The default, by measurement on the held-out qbqtc queries (bench/bench_cjk_lexical.py): the
#: best nDCG@4 and R@100 of the modes without Chinese stop words (which did not help), no
#: dictionary, about 4x jieba's tokenization speed.
CJK_DEFAULT: CJKMode = "unigram+bigram"

#: CJK characters that form runs: Han (with 々 and 〇), hiragana, katakana (with ー), hangul.
_CJK_CLASS = (
    "\u3005\u3007\u3040-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
    "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
)
CJK_RUN = re.compile(f"[{_CJK_CLASS}]+")
#: bm25s's default token pattern, then (only in front of it) a whole space-separated CJK
#: segment: a string without CJK characters is split exactly as bm25s splits it.
BM25S_PATTERN = r"(?u)\b\w\w+\b"
TOKEN_PATTERN = rf"(?u)[{_CJK_CLASS}]+|\b\w\w+\b"
#: Full-width ASCII forms and the ideographic space (CJK input methods type them): folded to
#: ASCII by NFKC. ASCII text never contains them, so English text is untouched.
_FULLWIDTH = re.compile("[\u3000\uff01-\uff5e]+")


def _bigrams(run: str) -> list[str]:
    return [run] if len(run) < 2 else [run[i : i + 2] for i in range(len(run) - 1)]


@cache
def _jieba() -> Any:
    """jieba's tokenizer, loaded on first use (about a second), its log silenced."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


def cjk_segments(run: str, cjk: CJKMode = CJK_DEFAULT) -> list[str]:
    """The tokens of one run of CJK characters (a match of ``CJK_RUN``)."""
    if cjk == "none":
        return [run]
    if cjk == "bigram":
        return _bigrams(run)
    if cjk == "unigram+bigram":  # in text order: a, ab, b, bc, c
        return [run[i : i + n] for i in range(len(run)) for n in (1, 2) if i + n <= len(run)]
    words = [w for w in _jieba().lcut(run, HMM=True) if w]
    if cjk == "jieba":
        return words
    if cjk == "jieba+bigram":
        return words + (_bigrams(run) if len(run) > 1 else [])
    raise ValueError(f"unknown CJK mode {cjk!r}: one of {', '.join(CJK_MODES)}")


def split_word(word: str, cjk: CJKMode = CJK_DEFAULT) -> list[str]:
    """A whitespace-free word as words: its CJK runs segmented, the text between them kept as
    it is, so a word without CJK characters is returned unchanged (the hash encoder's words)."""
    if cjk == "none" or not CJK_RUN.search(word):
        return [word]
    out: list[str] = []
    last = 0
    for m in CJK_RUN.finditer(word):
        if m.start() > last:
            out.append(word[last : m.start()])
        out += cjk_segments(m.group(), cjk)
        last = m.end()
    if last < len(word):
        out.append(word[last:])
    return out


def prepare(text: str, cjk: CJKMode = CJK_DEFAULT) -> str:
    """`text` with full-width forms folded and each CJK run replaced by its space-separated
    segments (the input of bm25s with ``TOKEN_PATTERN``); text without either is unchanged."""
    if cjk == "none" or text.isascii():
        return text
    if _FULLWIDTH.search(text):
        text = _FULLWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return CJK_RUN.sub(lambda m: " " + " ".join(cjk_segments(m.group(), cjk)) + " ", text)


def stopword_list(stopwords: str | None, cjk_stopwords: bool = False) -> list[str]:
    """bm25s's list for `stopwords` ("en", None...), plus its Chinese list if asked (it holds
    CJK words only, so English tokens are unaffected)."""
    from bm25s.stopwords import STOPWORDS_CHINESE
    from bm25s.tokenization import _infer_stopwords

    words = list(_infer_stopwords(stopwords))
    return words + list(STOPWORDS_CHINESE) if cjk_stopwords else words


def tokenize(
    texts: Sequence[str],
    stopwords: str | None = "en",
    cjk: CJKMode = CJK_DEFAULT,
    cjk_stopwords: bool = False,
) -> Any:
    """bm25s tokens (ids + vocabulary) of `texts`, CJK runs segmented by `cjk`: the one
    tokenizer of queries and documents. `cjk_stopwords` adds bm25s's Chinese list to
    `stopwords` (off by default: it did not help on qbqtc)."""
    import bm25s

    if cjk not in CJK_MODES:
        raise ValueError(f"unknown CJK mode {cjk!r}: one of {', '.join(CJK_MODES)}")
    if cjk == "none":
        prepared, pattern = list(texts), BM25S_PATTERN
    else:
        prepared, pattern = [prepare(t, cjk) for t in texts], TOKEN_PATTERN
    words = stopword_list(stopwords, cjk_stopwords) if cjk_stopwords else stopwords
    return bm25s.tokenize(prepared, token_pattern=pattern, stopwords=words, show_progress=False)


def bm25_index(
    texts: Sequence[str],
    stopwords: str | None = "en",
    cjk: CJKMode = CJK_DEFAULT,
    cjk_stopwords: bool = False,
) -> Any:
    """A bm25s.BM25 index over `texts` (English stop words removed unless `stopwords=None`);
    retrieve with the same `cjk` and stop words."""
    import bm25s

    model = bm25s.BM25()
    model.index(tokenize(texts, stopwords, cjk, cjk_stopwords), show_progress=False)
    return model


def bm25_retrieve(
    model: Any,
    queries: Sequence[str],
    k: int,
    stopwords: str | None = "en",
    cjk: CJKMode = CJK_DEFAULT,
    cjk_stopwords: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` (document rows, scores) per query, single-threaded (deterministic, no pool)."""
    tokens = tokenize(queries, stopwords, cjk, cjk_stopwords)
    docs, scores = model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return np.asarray(docs), np.asarray(scores)
