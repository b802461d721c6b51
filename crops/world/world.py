"""A built world: catalogue, users, the production platform and the feed, with its truth."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from crops import __version__
from crops.schema import TS, VIDEOS
from crops.world import taxonomy as tx
from crops.world.catalog import (
    DOMAINS,
    FORM_KINDS,
    Forms,
    Intents,
    Users,
    Videos,
    build_forms,
    build_intents,
    build_users,
    build_videos,
    grades,
)
from crops.world.config import WorldConfig
from crops.world.feed import Feed
from crops.world.platform import Platform


@dataclass
class World:
    cfg: WorldConfig
    intents: Intents
    forms: Forms
    videos: Videos
    users: Users
    platform: Platform
    feed: Feed
    #: (sorted catalogue ids, their rows), built on the first `video_rows` call
    _sorted_ids: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, cfg: WorldConfig) -> World:
        """Deterministic in `cfg`: the same config rebuilds the same catalogue and users."""
        tx.check()
        rng = np.random.default_rng([cfg.seed, 0])
        intents = build_intents(rng)
        forms = build_forms(intents, rng)
        videos = build_videos(cfg, intents, rng)
        users = build_users(cfg, np.random.default_rng([cfg.seed, 1]))
        platform = Platform(cfg, intents, forms, videos, users)
        feed = Feed(videos, intents, users, cfg.long_play_ms)
        return cls(cfg, intents, forms, videos, users, platform, feed)

    @classmethod
    def load(cls, directory: str | Path) -> World:
        """Rebuild the world a `crops simulate` run wrote, from its world.json."""
        path = Path(directory) / "world.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; is {directory} a `crops simulate` output?")
        meta = json.loads(path.read_text())
        if meta.get("simulator") != __version__:
            raise ValueError(
                f"{path}: written by simulator {meta.get('simulator')!r}, this is {__version__};"
                " simulate the world again"
            )
        world = cls.build(WorldConfig(**meta["config"]))
        if meta.get("fingerprint") != world.fingerprint():
            raise ValueError(
                f"{path}: the rebuilt catalogue differs from the one written (config edited, or"
                " another simulator build); simulate the world again"
            )
        return world

    def fingerprint(self) -> str:
        """A hash of the catalogue, so a world rebuilt from its config is checked, not trusted."""
        v = self.videos
        h = hashlib.sha256()
        for arr in (v.video_id, v.topic, v.facet, v.quality, v.popularity, v.duration_ms):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(v.caption).encode())
        h.update("\n".join(self.forms.text).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ ground truth

    def form_id(self, query: str) -> int | None:
        """The surface form a query string is, or None for text the world never produces."""
        if not hasattr(self, "_form_index"):
            self._form_index = {q: i for i, q in enumerate(self.forms.text)}
        return self._form_index.get(query)

    def video_rows(self, video_ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of video ids; -1 for ids the catalogue does not hold."""
        ids = np.asarray(video_ids, dtype=np.int64)
        if self._sorted_ids is None:
            catalogue = np.asarray(self.videos.video_id, dtype=np.int64)
            order = np.argsort(catalogue, kind="stable")
            self._sorted_ids = (catalogue[order], order)
        sorted_ids, order = self._sorted_ids
        if len(sorted_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def query_grades(self, query: str, video_ids: np.ndarray, unknown: int = 0) -> np.ndarray:
        """True relevance 0..3 of videos for a query: the best over the query's senses.

        Unknown queries and unknown (e.g. synthetic) video ids grade `unknown` (0 by default;
        the diagnostics pass -1 to count them as ungraded). The one home of a query's grades:
        the graded test set, mining's quality report and the diagnostics all read them here.
        """
        rows = self.video_rows(video_ids)
        f = self.form_id(query)
        if f is None or len(rows) == 0:
            return np.full(len(rows), unknown, dtype=np.int8)
        senses = self.forms.senses[f]
        g = grades(self.intents, self.videos, senses[:, None], np.maximum(rows, 0)[None, :])
        return np.where(rows >= 0, g.max(axis=0), unknown).astype(np.int8)

    # ------------------------------------------------------------------ tables

    def videos_table(self) -> pa.Table:
        v = self.videos
        return pa.table(
            {
                "video_id": pa.array(v.video_id, pa.int64()),
                "caption": pa.array(v.caption, pa.string()),
                "tags": pa.array(v.tags, pa.list_(pa.string())),
                "cover_text": pa.array(v.cover_text, pa.string()),
                "category": pa.array([tx.TOPICS[t].name for t in v.topic], pa.string()),
                "upload_ts": pa.array(v.upload_ts, pa.int64()).cast(TS),
                "synthetic": pa.array(np.zeros(len(v), dtype=bool)),
                "source_query": pa.nulls(len(v), pa.string()),
            },
            schema=VIDEOS,
        )

    def truth_tables(self) -> dict[str, pa.Table]:
        """What only the simulator knows: per-video topic/facet/quality, intents, forms."""
        v, it, fm = self.videos, self.intents, self.forms
        return {
            "videos": pa.table(
                {
                    "video_id": v.video_id,
                    "topic": [tx.TOPICS[t].name for t in v.topic],
                    "facet": [
                        tx.TOPICS[t].facets[f].name for t, f in zip(v.topic, v.facet, strict=True)
                    ],
                    "intent_id": np.array(
                        [self.intent_of(t, f) for t, f in zip(v.topic, v.facet, strict=True)]
                    ),
                    "domain": [DOMAINS[d] for d in v.domain],
                    "colloquial": v.colloquial,
                    "quality": v.quality,
                    "popularity": v.popularity,
                    "duration_ms": v.duration_ms,
                }
            ),
            "intents": pa.table(
                {
                    "intent_id": np.arange(len(it)),
                    "topic": [tx.TOPICS[t].name for t in it.topic],
                    "facet": [
                        tx.TOPICS[t].facets[f].name for t, f in zip(it.topic, it.facet, strict=True)
                    ],
                    "domain": [DOMAINS[d] for d in it.domain],
                    "weight": it.weight,
                }
            ),
            "forms": pa.table(
                {
                    "form_id": np.arange(len(fm)),
                    "query": fm.text,
                    "kind": [FORM_KINDS[k] for k in fm.kind],
                    "intent_id": fm.intent,
                    "interpretation": fm.interpretation,
                    "senses": [s.tolist() for s in fm.senses],
                }
            ),
        }

    def intent_of(self, topic: int, facet: int) -> int:
        """The intent id of a (topic, facet) pair."""
        if not hasattr(self, "_intent_index"):
            self._intent_index = {
                (int(t), int(f)): i
                for i, (t, f) in enumerate(zip(self.intents.topic, self.intents.facet, strict=True))
            }
        return self._intent_index[(int(topic), int(facet))]
