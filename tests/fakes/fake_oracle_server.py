"""Test retrievers that know the world's truth, and a real KServe server around one.

`python tests/fakes/fake_oracle_server.py WORLD_DIR PORT` serves the oracle with
kserve.ModelServer (the real server, KServe v1 protocol) so the online mode is tested over real
HTTP.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from crops.world.world import World


def oracle(world: World) -> callable:
    """Ranks by true relevance for the query, then quality: the best a retriever can do."""

    def retrieve(queries: Sequence[str], k: int) -> list[list[int]]:
        out = []
        for q in queries:
            g = world.query_grades(q, world.videos.video_id).astype(float)
            order = np.argsort(-(g + 0.5 * world.videos.quality), kind="stable")[:k]
            out.append(world.videos.video_id[order].tolist())
        return out

    return retrieve


def random_retriever(world: World, seed: int = 0) -> callable:
    """Random videos: the worst a retriever can do."""
    rng = np.random.default_rng(seed)

    def retrieve(queries: Sequence[str], k: int) -> list[list[int]]:
        return [rng.choice(world.videos.video_id, size=k, replace=False).tolist() for _ in queries]

    return retrieve


def serve(world_dir: str, port: int) -> None:
    from kserve import Model, ModelServer

    world = World.load(world_dir)
    best = oracle(world)

    class OracleModel(Model):
        def load(self) -> bool:
            self.ready = True
            return self.ready

        def predict(self, payload, headers=None, response_headers=None):
            preds = []
            for inst in payload["instances"]:
                ids = best([inst["query"]], int(inst.get("top_k", 100)))[0]
                preds.append({"video_ids": ids, "scores": [1.0 / (i + 1) for i in range(len(ids))]})
            return {"predictions": preds}

    model = OracleModel("crops")
    model.load()
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
