"""The world's relevance model for texts: how relevant a made-up video's words are to a query.

A synthesised video has no row in the catalogue, so the truth (`catalog.grades`) cannot grade
it directly. This judge inverts the generator that wrote the catalogue's captions
(`catalog.build_videos`): every caption word comes from the video's facet (canonical or
colloquial words), its topic, hashtag spam (the topic's other facets, trending topic words) or
filler. Naive Bayes over that mixture gives the intent that most likely wrote a text; the text
is then graded against the query's senses exactly as a catalogue video on that intent would be
(3 same facet, 2 same topic, 1 same domain, 0 otherwise; a made-up video has no quality, so
same facet counts as 3).

It is measurement only, like all the world's truth: nothing that mines, trains or synthesises
may import it. `validate` scores the judge on the catalogue's own videos, whose intents are
known, so every precision it yields comes with its own error rate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from crops.world import taxonomy as tx
from crops.world.catalog import TRENDING, grades
from crops.world.world import World

#: Share of a caption's informative words from each part of the generator, read off
#: `build_videos`: two facet words, one or two topic words, spam in 40 % of captions (60 %
#: another facet of the topic, 40 % trending words), and a floor for words off the intent.
MIXTURE = {"facet": 0.45, "topic": 0.35, "other_facets": 0.12, "trending": 0.06, "floor": 0.02}

_TOKEN = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Verdict:
    """A text's judged intent (-1: no word the world knows) and its grade for the query."""

    intent: int
    grade: int

    @property
    def relevant(self) -> bool:
        return self.grade >= 2


class TextJudge:
    """Grades free text against a query by the intent that most likely wrote it."""

    def __init__(self, world: World) -> None:
        self.world = world
        vocab = sorted({w for t in tx.TOPICS for w in _topic_words(t)})
        self._index = {w: i for i, w in enumerate(vocab)}
        # the taxonomy guarantees one word per stem, so stems map plurals and -ing forms home
        self._by_stem = {tx.stem(w): i for w, i in self._index.items()}
        self.log_lik = self._likelihoods(len(vocab))

    def _likelihoods(self, n_words: int) -> np.ndarray:
        """log P(word | intent), (n_intents, n_words), from the caption generator's mixture."""
        intents = self.world.intents
        trending = self._dist(TRENDING, n_words)
        rows = []
        for i in range(len(intents)):
            topic = tx.TOPICS[int(intents.topic[i])]
            facet = topic.facets[int(intents.facet[i])]
            others = [w for f in topic.facets if f is not facet for w in f.words]
            p = (
                MIXTURE["facet"] * self._dist((*facet.words, *facet.colloquial), n_words)
                + MIXTURE["topic"] * self._dist((*topic.words, *topic.colloquial), n_words)
                + MIXTURE["other_facets"] * self._dist(others, n_words)
                + MIXTURE["trending"] * trending
                + MIXTURE["floor"] / n_words
            )
            rows.append(np.log(p))
        return np.stack(rows)

    def _dist(self, words: Iterable[str], n_words: int) -> np.ndarray:
        p = np.zeros(n_words)
        for w in words:
            p[self._index[w]] += 1
        return p / max(p.sum(), 1)

    def word_ids(self, text: str) -> list[int]:
        """The taxonomy words in a text (by word or by stem); filler and unknown words add
        nothing, since every intent writes them alike."""
        out = []
        for tok in _TOKEN.findall(text.lower()):
            i = self._index.get(tok)
            if i is None:
                i = self._by_stem.get(tx.stem(tok))
            if i is not None:
                out.append(i)
        return out

    def intent(self, text: str) -> int:
        """The intent that most likely wrote the text; -1 when it has no word the world knows."""
        ids = self.word_ids(text)
        if not ids:
            return -1
        return int(np.argmax(self.log_lik[:, ids].sum(axis=1)))

    def judge(self, query: str, text: str) -> Verdict:
        """The text's grade for a query, as the truth would grade a video on its intent."""
        i = self.intent(text)
        f = self.world.form_id(query)
        if i < 0 or f is None:
            return Verdict(i, 0)
        return Verdict(i, self.grade_intent(self.world.forms.senses[f], i))

    def grade_intent(self, senses: np.ndarray, intent: int) -> int:
        """The best grade over the query's senses of a video on `intent` (no quality: 3 when
        the facet matches)."""
        it = self.world.intents
        senses = np.asarray(senses)
        if (it.topic[senses] == it.topic[intent]).any():
            same_facet = (it.topic[senses] == it.topic[intent]) & (
                it.facet[senses] == it.facet[intent]
            )
            return 3 if same_facet.any() else 2
        return int((it.domain[senses] == it.domain[intent]).any())

    def validate(self, n: int = 4000, seed: int = 0) -> dict:
        """The judge on catalogue videos, whose intents are known: how often it names their
        topic and facet, and how often its grade >= 2 agrees with the truth's for the queries
        that can mean them."""
        w = self.world
        v = w.videos
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(v), size=min(n, len(v)), replace=False)
        truth = np.array([w.intent_of(int(v.topic[r]), int(v.facet[r])) for r in rows])
        judged = np.array([self.intent(video_text(w, r)) for r in rows])
        it = w.intents
        known = judged >= 0
        topic_ok = known & (it.topic[np.maximum(judged, 0)] == v.topic[rows])
        facet_ok = topic_ok & (it.facet[np.maximum(judged, 0)] == v.facet[rows])
        # grade agreement on (form, video) pairs: every form once, against random catalogue videos
        # and a video of one of its senses (so relevant pairs are not rare)
        agree = total = 0
        by_intent: dict[int, list[int]] = {}
        for r, t in zip(rows, truth, strict=True):
            by_intent.setdefault(int(t), []).append(int(r))
        for senses in w.forms.senses:
            pool = [r for s in senses for r in by_intent.get(int(s), [])][:1]
            pick = [*pool, int(rows[rng.integers(len(rows))])]
            for r in pick:
                j = judged[np.flatnonzero(rows == r)[0]]
                got = j >= 0 and self.grade_intent(senses, int(j)) >= 2
                true = grades(it, v, senses[:, None], np.array([[r]])).max() >= 2
                agree += int(got == bool(true))
                total += 1
        return {
            "videos": int(len(rows)),
            "no_known_word": int((~known).sum()),
            "topic_accuracy": float(topic_ok.mean()),
            "facet_accuracy": float(facet_ok.mean()),
            "pairs": total,
            "relevant_agreement": agree / total if total else None,
        }


def _topic_words(topic: tx.Topic) -> tuple[str, ...]:
    """Every word the taxonomy files under a topic: its own and its facets', both registers."""
    return (
        *topic.words,
        *topic.colloquial,
        *(w for f in topic.facets for w in (*f.words, *f.colloquial)),
    )


def video_text(world: World, row: int) -> str:
    """A catalogue video's text as the index reads it: caption, tags, cover text."""
    v = world.videos
    return " ".join((v.caption[row], " ".join(v.tags[row]), v.cover_text[row]))


def synthetic_text(caption: str, tags: Sequence[str], cover_text: str) -> str:
    """A synthesised video's text, in the same order as `video_text`."""
    return " ".join((caption, " ".join(tags), cover_text))
