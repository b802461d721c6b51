"""The static world: intents and their surface forms, videos with ground truth, users.

Everything is drawn from the taxonomy with one seeded generator, so rebuilding a world from its
config gives the same catalogue (the online mode relies on that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crops.world import taxonomy as tx
from crops.world.config import EPOCH_MS, WorldConfig

FORM_KINDS = ("head", "refined", "colloquial", "misspelt", "ambiguous")
VOWELS = "aeiou"


@dataclass
class Intents:
    """One intent per (topic, facet); arrays indexed by intent id."""

    topic: np.ndarray  # int, index into tx.TOPICS
    facet: np.ndarray  # int, index into the topic's facets
    domain: np.ndarray  # int, index into DOMAINS
    weight: np.ndarray  # popularity of the facet within its topic

    def __len__(self) -> int:
        return len(self.topic)


@dataclass
class Forms:
    """Surface forms (distinct query strings). An ambiguous form has several senses."""

    text: list[str]
    kind: np.ndarray  # index into FORM_KINDS
    intent: np.ndarray  # the intent for unambiguous forms, -1 for ambiguous ones
    interpretation: np.ndarray  # the intent the production system reads the form as
    senses: list[np.ndarray]  # intents the form can mean
    by_intent: dict[tuple[int, str], int]  # (intent, kind) -> form id

    def __len__(self) -> int:
        return len(self.text)


@dataclass
class Videos:
    """Video metadata (the contract's columns) plus the simulator's ground truth."""

    video_id: np.ndarray
    topic: np.ndarray
    facet: np.ndarray
    domain: np.ndarray
    colloquial: np.ndarray  # bool: worded with colloquial synonyms
    quality: np.ndarray  # 0..1, drives long play
    popularity: np.ndarray  # Zipf weights, sum 1
    duration_ms: np.ndarray
    upload_ts: np.ndarray  # ms since epoch
    caption: list[str]
    tags: list[list[str]]
    cover_text: list[str]

    def __len__(self) -> int:
        return len(self.video_id)


@dataclass
class Users:
    interests: np.ndarray  # (n_users, n_topics), rows sum to 1
    activity: np.ndarray  # multiplies the per-day rates

    def __len__(self) -> int:
        return len(self.activity)


DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(t.domain for t in tx.TOPICS))
TOPIC_INDEX = {t.name: i for i, t in enumerate(tx.TOPICS)}


def misspell(word: str, rng: np.random.Generator, vocabulary: set[str]) -> str:
    """A plausible typo of `word` (swap, drop, double or vowel slip) that is no real word here."""
    for _ in range(20):
        i = int(rng.integers(1, len(word) - 1))
        op = int(rng.integers(4))
        if op == 0:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif op == 1:
            out = word[:i] + word[i + 1 :]
        elif op == 2:
            out = word[:i] + word[i] + word[i:]
        else:
            vs = [j for j, ch in enumerate(word) if ch in VOWELS and j > 0]
            if not vs:
                continue
            j = vs[int(rng.integers(len(vs)))]
            out = word[:j] + rng.choice([v for v in VOWELS if v != word[j]]) + word[j + 1 :]
        if out != word and out not in vocabulary:
            return out
    return word + word[-1]


def vocabulary() -> set[str]:
    words: set[str] = set(tx.FILLER)
    for t in tx.TOPICS:
        words.update(t.words, t.colloquial)
        for f in t.facets:
            words.update(f.words, f.colloquial)
    return words


def build_intents(rng: np.random.Generator) -> Intents:
    topic, facet, domain, weight = [], [], [], []
    for ti, t in enumerate(tx.TOPICS):
        zipf = 1.0 / np.arange(1, len(t.facets) + 1) ** 0.8
        order = rng.permutation(len(t.facets))
        for fi in range(len(t.facets)):
            topic.append(ti)
            facet.append(fi)
            domain.append(DOMAINS.index(t.domain))
            weight.append(zipf[order[fi]] / zipf.sum())
    return Intents(np.array(topic), np.array(facet), np.array(domain), np.array(weight))


def build_forms(intents: Intents, rng: np.random.Generator) -> Forms:
    """Head, refined, colloquial and misspelt forms per intent; one ambiguous form per polyseme."""
    vocab = vocabulary()
    text: list[str] = []
    kind: list[int] = []
    intent: list[int] = []
    interp: list[int] = []
    senses: list[np.ndarray] = []
    by_intent: dict[tuple[int, str], int] = {}
    seen: dict[str, int] = {}

    def add(q: str, k: str, i: int, interpretation: int, sense: np.ndarray) -> int:
        if q in seen:  # a collision would give one string two meanings: keep the first
            return seen[q]
        seen[q] = len(text)
        text.append(q)
        kind.append(FORM_KINDS.index(k))
        intent.append(i)
        interp.append(interpretation)
        senses.append(sense)
        return seen[q]

    for i in range(len(intents)):
        t = tx.TOPICS[intents.topic[i]]
        f = t.facets[intents.facet[i]]
        fw, tw = list(f.words), [w for w in t.words if w not in tx.POLYSEMOUS] or list(t.words)
        head = f"{tw[0]} {fw[0]} {fw[1]}"
        refined = f"{fw[0]} {fw[2 % len(fw)]} {tw[1 % len(tw)]} {tx.FILLER[i % len(tx.FILLER)]}"
        colloquial = f"{t.colloquial[0]} {f.colloquial[0]} {f.colloquial[1]}"
        words = head.split()
        for j in rng.choice(3, size=2, replace=False):
            words[j] = misspell(words[j], rng, vocab)
        one = np.array([i])
        for k, q in (("head", head), ("refined", refined), ("colloquial", colloquial)):
            by_intent[(i, k)] = add(q, k, i, i, one)
        by_intent[(i, "misspelt")] = add(" ".join(words), "misspelt", i, i, one)

    for word, (dominant, minor) in sorted(tx.POLYSEMOUS.items()):
        d, m = TOPIC_INDEX[dominant], TOPIC_INDEX[minor]
        sense = np.flatnonzero((intents.topic == d) | (intents.topic == m))
        dom = np.flatnonzero(intents.topic == d)
        top = int(dom[np.argmax(intents.weight[dom])])
        fid = add(word, "ambiguous", -1, top, sense)
        for i in sense:
            by_intent.setdefault((int(i), "ambiguous"), fid)
    return Forms(text, np.array(kind), np.array(intent), np.array(interp), senses, by_intent)


def _words(rng: np.random.Generator, pool, n: int) -> list[str]:
    pool = list(pool)
    return list(rng.choice(pool, size=min(n, len(pool)), replace=False))


TRENDING = tuple(w for t in tx.TOPICS for w in t.words)


def _spam(rng: np.random.Generator, topic: tx.Topic, facet: tx.Facet, share: float) -> list[str]:
    """Hashtag spam: words of the topic's other facets or trending topic words, added by
    uploaders for reach. It makes lexical matches that are not relevant."""
    if rng.random() >= share:
        return []
    out = []
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.6:
            other = [f for f in topic.facets if f is not facet]
            out.append(str(rng.choice(other[int(rng.integers(len(other)))].words)))
        else:
            out.append(str(rng.choice(TRENDING)))
    return out


def build_videos(cfg: WorldConfig, intents: Intents, rng: np.random.Generator) -> Videos:
    """Videos on every intent; a share worded colloquially so that lexical search misses them."""
    n = cfg.n_videos
    topic_share = rng.dirichlet(np.full(len(tx.TOPICS), 8.0))
    topic = rng.choice(len(tx.TOPICS), size=n, p=topic_share)
    facet = np.empty(n, dtype=np.int64)
    for ti in range(len(tx.TOPICS)):
        idx = np.flatnonzero(topic == ti)
        w = intents.weight[intents.topic == ti]
        facet[idx] = rng.choice(len(w), size=len(idx), p=w / w.sum())
    # every intent gets at least one video, whatever the scale
    topic[: len(intents)], facet[: len(intents)] = intents.topic, intents.facet
    domain = np.array([DOMAINS.index(tx.TOPICS[t].domain) for t in topic])
    colloquial = rng.random(n) < cfg.colloquial_share
    quality = rng.beta(2.0, 2.0, size=n)
    rank = rng.permutation(n) + 1
    popularity = 1.0 / rank**0.9
    popularity /= popularity.sum()
    duration = np.clip(rng.lognormal(np.log(30_000), 0.8, size=n), 5_000, 300_000).astype(np.int64)
    upload = EPOCH_MS - rng.integers(0, 60 * 86_400_000, size=n)

    captions, tags, covers = [], [], []
    filler = list(tx.FILLER)
    for v in range(n):
        t = tx.TOPICS[topic[v]]
        f = t.facets[facet[v]]
        if colloquial[v]:
            fw = _words(rng, f.colloquial, 2)
            tw = _words(rng, t.colloquial, 1)
            if rng.random() < 0.25:
                tw.append(str(rng.choice(t.words)))
        else:
            fw = _words(rng, f.words, 2)
            tw = _words(rng, t.words, 2)
        body = fw + tw + _words(rng, filler, 2)
        rng.shuffle(body)
        spam = _spam(rng, t, f, cfg.spam_share)
        captions.append(" ".join(body + spam))
        tags.append(sorted(set(fw[:1] + tw[:1] + spam + _words(rng, filler, 1))))
        covers.append(" ".join(_words(rng, fw + tw, 2)))
    return Videos(
        video_id=np.arange(1, n + 1, dtype=np.int64),
        topic=topic,
        facet=facet,
        domain=domain,
        colloquial=colloquial,
        quality=quality,
        popularity=popularity,
        duration_ms=duration,
        upload_ts=upload,
        caption=captions,
        tags=tags,
        cover_text=covers,
    )


def build_users(cfg: WorldConfig, rng: np.random.Generator) -> Users:
    """Users with a few strong interests over topics and a heavy-tailed activity level."""
    k = len(tx.TOPICS)
    interests = rng.dirichlet(np.full(k, 0.15), size=cfg.n_users)
    interests = 0.9 * interests + 0.1 / k
    activity = rng.lognormal(0.0, 0.5, size=cfg.n_users)
    activity /= activity.mean()
    return Users(interests, activity)


#: A video on the intent's facet is grade 3 only when it is good enough to satisfy.
GRADE3_MIN_QUALITY = 0.4


def grades(
    intents: Intents, videos: Videos, intent_ids: np.ndarray, video_idx: np.ndarray
) -> np.ndarray:
    """True relevance 0..3 of videos (row positions) for intents, broadcast together.

    3 same facet and quality >= GRADE3_MIN_QUALITY; 2 same facet but poor, or same topic;
    1 same domain; 0 otherwise.
    """
    it, vt = intents.topic[intent_ids], videos.topic[video_idx]
    same_topic = it == vt
    same_facet = same_topic & (intents.facet[intent_ids] == videos.facet[video_idx])
    good = videos.quality[video_idx] >= GRADE3_MIN_QUALITY
    return np.where(
        same_facet & good,
        3,
        np.where(
            same_topic, 2, np.where(intents.domain[intent_ids] == videos.domain[video_idx], 1, 0)
        ),
    ).astype(np.int8)
