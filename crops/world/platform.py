"""The production system and its users: lexical retrieval, pre-ranking, ranking, display,
a position-biased click model on true relevance, watch time and reformulation.

Search sessions are simulated in vectorised rounds: round r holds the r-th query of every
session still going, so a batch of thousands of requests costs a few NumPy calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crops.lexical import bm25_index, bm25_retrieve
from crops.schema import long_play_np
from crops.world.catalog import FORM_KINDS, Forms, Intents, Users, Videos, grades
from crops.world.config import WorldConfig

#: A retriever maps a batch of query strings to ranked video ids (best first).
Retriever = Callable[[Sequence[str], int], list[Sequence[int]]]

STAGE_PREFILTERED, STAGE_RANKED, STAGE_SHOWN = 0, 1, 2
REL_FIRST, REL_REFORMULATION, REL_NEW_INTENT = 0, 1, 2
RELATIONS = ("first", "reformulation", "new_intent")

ATTRACT = np.array([0.01, 0.03, 0.14, 0.38])  # click given examined, by true grade
LONG_PLAY = np.array([0.04, 0.10, 0.35, 0.70])  # long play given click, by true grade (q=0.5)
SATISFY_GRADE2 = 0.35  # a long play on a grade-2 video satisfies with this chance
NEW_INTENT_PROB = 0.12  # a satisfied user searches something else in the same session
#: Which form an unsatisfied user retypes the intent as (by kind, among forms not yet tried).
REFORMULATION_WEIGHT = {"head": 4.0, "refined": 2.0, "colloquial": 1.0, "misspelt": 0.2}


def video_text(videos: Videos) -> list[str]:
    """The text production's lexical index sees: caption, tags and cover text."""
    return [
        f"{c} {' '.join(t)} {o}"
        for c, t, o in zip(videos.caption, videos.tags, videos.cover_text, strict=True)
    ]


@dataclass
class Requests:
    """One search request per element; the first columns say who asks what, when."""

    session: np.ndarray  # session index within the batch
    user: np.ndarray
    intent: np.ndarray
    form: np.ndarray
    ts_ms: np.ndarray
    relation: np.ndarray  # REL_*
    prev: np.ndarray  # index (within the batch's request list) of the previous request, -1


@dataclass
class Impressions:
    """Cascade rows of a batch of requests: (n_requests, k) arrays, -1 video = no candidate."""

    video: np.ndarray  # video row index
    stage: np.ndarray
    position: np.ndarray
    clicked: np.ndarray
    watch_ms: np.ndarray


class Platform:
    """The production cascade over one catalogue, with a pluggable first stage."""

    def __init__(
        self, cfg: WorldConfig, intents: Intents, forms: Forms, videos: Videos, users: Users
    ) -> None:
        self.cfg, self.intents, self.forms, self.videos, self.users = (
            cfg,
            intents,
            forms,
            videos,
            users,
        )
        logpop = np.log(videos.popularity)
        self.pop_z = (logpop - logpop.mean()) / logpop.std()
        self.id_to_row = {int(v): i for i, v in enumerate(videos.video_id)}
        self.pool_idx, self.pool_score = self._lexical_pools()
        self.legacy_idx = self._legacy_pools(np.random.default_rng([cfg.seed, 8]))

    # ------------------------------------------------------------------ first stage

    def _lexical_pools(self) -> tuple[np.ndarray, np.ndarray]:
        """BM25 (bm25s) top `lexical_pool` per distinct query, ties broken by popularity."""
        model = bm25_index(video_text(self.videos))
        k = self.cfg.lexical_pool
        docs, scores = bm25_retrieve(model, self.forms.text, k)
        scores = scores.astype(np.float32)
        popular = np.argsort(-self.videos.popularity, kind="stable")
        for q in np.flatnonzero((scores <= 0).any(axis=1)):
            hit = docs[q][scores[q] > 0]
            fill = popular[~np.isin(popular, hit)][: k - len(hit)]
            docs[q] = np.concatenate([hit, fill])
            scores[q] = np.concatenate([scores[q][scores[q] > 0], np.zeros(len(fill))])
        top = scores.max(axis=1, keepdims=True)
        return docs.astype(np.int64), scores / np.where(top > 0, top, 1.0)

    def _legacy_pools(self, rng: np.random.Generator) -> np.ndarray:
        """The legacy semantic channel: per query a fixed set of relevant videos.

        It stands for production's older click-trained dense retriever: it reaches videos that
        lexical matching misses, but only a small, popularity-biased slice of them, the same
        slice day after day (the bubble). Relevance is to the system's reading of the query.
        """
        n, k = len(self.forms), self.cfg.legacy_pool
        pools = np.empty((n, k), dtype=np.int64)
        rows = np.arange(len(self.videos))
        misspelt = FORM_KINDS.index("misspelt")
        for f in range(n):
            g = grades(self.intents, self.videos, self.forms.interpretation[f], rows)
            if self.forms.kind[f] == misspelt:  # typos confuse the legacy model too
                w = (g >= 1).astype(float)
            else:
                w = np.where(g == 3, 3.0, np.where(g == 2, 1.0, 0.0))
            w = w * np.sqrt(self.videos.popularity)
            m = min(k, int((w > 0).sum()))
            pools[f, :m] = rng.choice(rows, size=m, replace=False, p=w / w.sum())
            pools[f, m:] = -1  # a small world may hold fewer relevant videos than the pool
        return pools

    def lexical_candidates(
        self, form: np.ndarray, rng: np.random.Generator, *, ordered: bool = False
    ) -> np.ndarray:
        """Production's first stage for a batch of requests: `retrieve_k` candidates each.

        `retrieve_k - legacy_k` from the query's BM25 pool (popularity and noise reorder it per
        request), then up to `legacy_k` from the legacy semantic channel not already in; -1 pads.
        `ordered` sorts the lexical part best first (the cascade itself does not need it).
        """
        cfg = self.cfg
        n_lex = cfg.retrieve_k - cfg.legacy_k
        s = self.pool_score[form] + 0.15 * self.pop_z[self.pool_idx[form]]
        s = s + rng.gumbel(0.0, 0.08, size=s.shape)
        top = np.argpartition(-s, n_lex - 1, axis=1)[:, :n_lex]
        if ordered:  # best first, for callers that cut the list
            by_score = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, by_score, axis=1)
        lex = np.take_along_axis(self.pool_idx[form], top, axis=1)
        if cfg.legacy_k == 0:
            return lex
        legacy = self.legacy_idx[form]
        n_vid = len(self.videos)
        offset = np.arange(len(form))[:, None] * n_vid
        dup = np.isin(legacy + offset, lex + offset) | (legacy < 0)
        key = np.where(dup, np.inf, rng.random(legacy.shape))
        pick = np.argsort(key, axis=1, kind="stable")[:, : cfg.legacy_k]
        sem = np.take_along_axis(legacy, pick, axis=1)
        sem = np.where(np.take_along_axis(dup, pick, axis=1), -1, sem)
        return np.concatenate([lex, sem], axis=1)

    def retriever_candidates(self, retriever: Retriever, form: np.ndarray) -> np.ndarray:
        """Candidates from an outside retriever (function or endpoint), padded with -1."""
        k = self.cfg.retrieve_k
        distinct, inverse = np.unique(form, return_inverse=True)
        answers = retriever([self.forms.text[f] for f in distinct], k)
        if len(answers) != len(distinct):
            raise ValueError(f"retriever answered {len(answers)} of {len(distinct)} queries")
        table = np.full((len(distinct), k), -1, dtype=np.int64)
        for i, ids in enumerate(answers):
            rows = [self.id_to_row[int(v)] for v in list(ids)[:k] if int(v) in self.id_to_row]
            rows = list(dict.fromkeys(rows))
            table[i, : len(rows)] = rows
        return table[inverse]

    # ------------------------------------------------------------------ cascade and users

    def cascade(self, req: Requests, cand: np.ndarray, rng: np.random.Generator) -> Impressions:
        """Pre-rank, rank and display candidates; clicks and watch time by true relevance."""
        cfg = self.cfg
        valid = cand >= 0
        vid = np.where(valid, cand, 0)
        interp = self.forms.interpretation[req.form][:, None]
        g_sys = grades(self.intents, self.videos, interp, vid).astype(np.float64)
        pre = 0.8 * g_sys + 0.25 * self.pop_z[vid] + rng.normal(0, 0.9, size=vid.shape)
        pre = np.where(valid, pre, -np.inf)
        order = np.argsort(-pre, axis=1, kind="stable")
        n, k = vid.shape
        rows = np.arange(n)[:, None]
        position = np.empty_like(order)
        position[rows, order] = np.arange(k)[None, :]
        to_rank = position < cfg.rank_k
        rank = (
            1.0 * g_sys
            + 0.6 * self.videos.quality[vid]
            + 0.2 * self.pop_z[vid]
            + rng.normal(0, 0.35, size=vid.shape)
        )
        rank = np.where(to_rank & valid, rank, -np.inf)
        r_order = np.argsort(-rank, axis=1, kind="stable")
        r_pos = np.empty_like(r_order)
        r_pos[rows, r_order] = np.arange(k)[None, :]
        position = np.where(to_rank, r_pos, position)
        stage = np.where(
            to_rank, np.where(position < cfg.show_k, STAGE_SHOWN, STAGE_RANKED), STAGE_PREFILTERED
        )
        shown = (stage == STAGE_SHOWN) & valid

        g_true = grades(self.intents, self.videos, req.intent[:, None], vid)
        examine = 1.0 / (1.0 + position) ** 0.7
        quality = self.videos.quality[vid]
        p_click = examine * ATTRACT[g_true] * (0.6 + 0.8 * quality)
        clicked = shown & (rng.random(vid.shape) < p_click)
        p_long = np.clip(LONG_PLAY[g_true] * (0.4 + 1.2 * quality), 0, 0.97)
        is_long = clicked & (rng.random(vid.shape) < p_long)
        dur = self.videos.duration_ms[vid]
        thr = np.minimum(dur, self.cfg.long_play_ms)
        long_watch = thr + rng.random(vid.shape) * (dur - thr)
        short_watch = rng.uniform(0.05, 0.95, size=vid.shape) * thr
        watch = np.where(clicked, np.where(is_long, long_watch, short_watch), 0).astype(np.int64)
        watch = np.where(clicked & ~is_long, np.minimum(watch, thr - 1), watch)
        return Impressions(np.where(valid, cand, -1), stage, position, clicked, watch)

    def satisfied(self, req: Requests, imp: Impressions, rng: np.random.Generator) -> np.ndarray:
        """A long play on a grade-3 video satisfies; one on grade 2 sometimes does."""
        vid = np.where(imp.video >= 0, imp.video, 0)
        g = grades(self.intents, self.videos, req.intent[:, None], vid)
        lp = long_play_np(imp.watch_ms, self.videos.duration_ms[vid], self.cfg.long_play_ms)
        lp &= imp.clicked
        on3 = (lp & (g == 3)).any(axis=1)
        on2 = (lp & (g == 2)).any(axis=1) & (rng.random(len(g)) < SATISFY_GRADE2)
        return on3 | on2

    # ------------------------------------------------------------------ sessions

    def first_forms(self, intent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Pick the surface form a user types first, by the configured mix."""
        mix = self.cfg.form_mix.model_dump()
        kinds = np.array([mix[k] for k in FORM_KINDS])
        avail = np.array(
            [[(int(i), k) in self.forms.by_intent for k in FORM_KINDS] for i in intent], dtype=bool
        )
        p = avail * kinds[None, :]
        p /= p.sum(axis=1, keepdims=True)
        choice = (rng.random(len(intent))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
        return np.array(
            [
                self.forms.by_intent[(int(i), FORM_KINDS[c])]
                for i, c in zip(intent, choice, strict=True)
            ]
        )

    def next_form(self, intent: int, tried: set[int], rng: np.random.Generator) -> int | None:
        """The reformulation: another form of the same intent, head and refined first."""
        options = [
            (f, REFORMULATION_WEIGHT[k])
            for k in REFORMULATION_WEIGHT
            if (f := self.forms.by_intent.get((intent, k))) is not None and f not in tried
        ]
        if not options:
            return None
        w = np.array([weight for _, weight in options])
        return options[int(rng.choice(len(options), p=w / w.sum()))][0]

    def draw_intents(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Intents for sessions: topic by the user's interests, facet by facet popularity."""
        cum = np.cumsum(self.users.interests[users], axis=1)
        topic = (rng.random(len(users))[:, None] > cum).sum(axis=1)
        topic = np.minimum(topic, cum.shape[1] - 1)
        out = np.empty(len(users), dtype=np.int64)
        for t in np.unique(topic):
            sel = np.flatnonzero(topic == t)
            ids = np.flatnonzero(self.intents.topic == t)
            w = self.intents.weight[ids]
            out[sel] = rng.choice(ids, size=len(sel), p=w / w.sum())
        return out

    def run_sessions(
        self,
        users: np.ndarray,
        start_ms: np.ndarray,
        rng: np.random.Generator,
        retriever: Retriever | None = None,
        on_round: Callable[[int], None] | None = None,
    ) -> tuple[Requests, Impressions]:
        """Simulate one search session per user entry; returns all requests and their rows."""
        cfg = self.cfg
        n = len(users)
        intent = self.draw_intents(users, rng)
        form = self.first_forms(intent, rng)
        session = np.arange(n)
        ts = start_ms.astype(np.int64)
        relation = np.zeros(n, dtype=np.int8)
        prev = np.full(n, -1, dtype=np.int64)
        tried: list[set[int]] = [{int(f)} for f in form]
        all_req: list[Requests] = []
        all_imp: list[Impressions] = []
        offset = 0
        for _round in range(cfg.max_queries_per_session):
            if len(session) == 0:
                break
            req = Requests(session, users[session], intent, form, ts, relation, prev)
            if retriever is None:
                cand = self.lexical_candidates(form, rng)
            else:
                cand = self.retriever_candidates(retriever, form)
            imp = self.cascade(req, cand, rng)
            all_req.append(req)
            all_imp.append(imp)
            if on_round is not None:
                on_round(len(session))
            sat = self.satisfied(req, imp, rng)
            browse_ms = 1000 * (imp.stage == STAGE_SHOWN).sum(axis=1) + imp.watch_ms.sum(axis=1)
            u = rng.random(len(session))
            reform = ~sat & (u < cfg.reformulate_prob)
            new = sat & (u < NEW_INTENT_PROB)
            nxt_form, nxt_intent, keep, rel = [], [], [], []
            for j in np.flatnonzero(reform | new):
                s = session[j]
                if reform[j]:
                    f = self.next_form(int(intent[j]), tried[s], rng)
                    if f is None:
                        continue
                    it = int(intent[j])
                else:
                    it = int(self.draw_intents(users[s : s + 1], rng)[0])
                    f = int(self.first_forms(np.array([it]), rng)[0])
                    if f in tried[s]:
                        continue
                tried[s].add(f)
                keep.append(j)
                nxt_form.append(f)
                nxt_intent.append(it)
                rel.append(REL_REFORMULATION if reform[j] else REL_NEW_INTENT)
            keep_a = np.array(keep, dtype=np.int64)
            rel_a = np.array(rel, dtype=np.int8)
            think = rng.lognormal(np.log(12_000), 0.6, size=len(keep_a))
            slow = rng.random(len(keep_a)) < 0.12
            think = np.where(slow, rng.uniform(90_000, 400_000, size=len(keep_a)), think)
            think = np.where(
                rel_a == REL_NEW_INTENT, rng.lognormal(np.log(60_000), 1.0, len(keep_a)), think
            )
            ts = ts[keep_a] + browse_ms[keep_a] + think.astype(np.int64)
            prev = offset + keep_a
            offset += len(session)
            session = session[keep_a]
            intent = np.array(nxt_intent, dtype=np.int64)
            form = np.array(nxt_form, dtype=np.int64)
            relation = rel_a
        return _concat_requests(all_req), _concat_impressions(all_imp)


def _concat_requests(parts: list[Requests]) -> Requests:
    return Requests(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in Requests.__dataclass_fields__)
    )


def _concat_impressions(parts: list[Impressions]) -> Impressions:
    k = max(p.video.shape[1] for p in parts)

    def pad(a: np.ndarray, fill) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=fill)

    return Impressions(
        video=np.concatenate([pad(p.video, -1) for p in parts]),
        stage=np.concatenate([pad(p.stage, 0) for p in parts]),
        position=np.concatenate([pad(p.position, 0) for p in parts]),
        clicked=np.concatenate([pad(p.clicked, False) for p in parts]),
        watch_ms=np.concatenate([pad(p.watch_ms, 0) for p in parts]),
    )
