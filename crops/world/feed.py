"""The recommendation feed: interest-matched videos, no lexical matching, with watch time.

It reaches the colloquially worded videos that lexical search misses. Around a search, the
feed often serves the searched topic (users search what they saw, and the feed follows what
they searched), which is what makes feed consumption a positive for the query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crops.world.catalog import Intents, Users, Videos


@dataclass
class FeedLog:
    user: np.ndarray
    ts_ms: np.ndarray
    video: np.ndarray  # row index
    watch_ms: np.ndarray


class Feed:
    """Samples feed items by topic, then by popularity^0.6 x quality within the topic."""

    def __init__(self, videos: Videos, intents: Intents, users: Users, long_play_ms: int) -> None:
        self.videos, self.intents, self.users, self.long_play_ms = (
            videos,
            intents,
            users,
            long_play_ms,
        )
        w = videos.popularity**0.6 * (0.3 + videos.quality)
        self.by_topic: list[np.ndarray] = []
        self.cum_topic: list[np.ndarray] = []
        self.by_facet: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for t in range(int(videos.topic.max()) + 1):
            idx = np.flatnonzero(videos.topic == t)
            self.by_topic.append(idx)
            self.cum_topic.append(np.cumsum(w[idx]) / w[idx].sum())
            for f in np.unique(videos.facet[idx]):
                sub = idx[videos.facet[idx] == f]
                self.by_facet[(t, int(f))] = (sub, np.cumsum(w[sub]) / w[sub].sum())

    def _pick(self, idx: np.ndarray, cum: np.ndarray, u: np.ndarray) -> np.ndarray:
        return idx[np.minimum(np.searchsorted(cum, u), len(idx) - 1)]

    def serve(
        self,
        users: np.ndarray,
        start_ms: np.ndarray,
        length: int,
        rng: np.random.Generator,
        focus_intent: np.ndarray | None = None,
    ) -> FeedLog:
        """One feed session per entry; with `focus_intent`, half the items follow that intent."""
        n = len(users)
        shape = (n, length)
        cum = np.cumsum(self.users.interests[users], axis=1)
        topic = (rng.random(shape)[..., None] > cum[:, None, :]).sum(axis=2)
        topic = np.minimum(topic, cum.shape[1] - 1)
        facet = np.full(shape, -1)
        if focus_intent is not None:
            focus = rng.random(shape) < 0.5
            ft = np.broadcast_to(self.intents.topic[focus_intent][:, None], shape)
            topic = np.where(focus, ft, topic)
            on_facet = focus & (rng.random(shape) < 0.5)
            facet = np.where(on_facet, self.intents.facet[focus_intent][:, None], -1)
        video = np.empty(shape, dtype=np.int64)
        u = rng.random(shape)
        for t in np.unique(topic):
            m = (topic == t) & (facet < 0)
            video[m] = self._pick(self.by_topic[t], self.cum_topic[t], u[m])
        for t, f in {
            (int(a), int(b)) for a, b in zip(topic[facet >= 0], facet[facet >= 0], strict=True)
        }:
            m = (topic == t) & (facet == f)
            idx, c = self.by_facet[(t, f)]
            video[m] = self._pick(idx, c, u[m])

        interest = np.take_along_axis(self.users.interests[users], topic, axis=1)
        if focus_intent is not None:
            interest = np.where(topic == self.intents.topic[focus_intent][:, None], 1.0, interest)
        quality = self.videos.quality[video]
        p_long = np.clip(0.05 + 0.45 * quality + 0.45 * np.sqrt(interest), 0, 0.95)
        dur = self.videos.duration_ms[video]
        thr = np.minimum(dur, self.long_play_ms)
        is_long = rng.random(shape) < p_long
        watch = np.where(
            is_long,
            thr + rng.random(shape) * (dur - thr),
            rng.uniform(0.02, 0.95, size=shape) * (thr - 1),
        ).astype(np.int64)
        gaps = watch + 800 + rng.integers(0, 1500, size=shape)
        ts = start_ms[:, None] + np.concatenate(
            [np.zeros((n, 1), dtype=np.int64), np.cumsum(gaps, axis=1)[:, :-1]], axis=1
        )
        return FeedLog(np.repeat(users, length), ts.ravel(), video.ravel(), watch.ravel())
