"""The retrieval predictor: a `kserve.Model` that embeds queries and searches the video index.

Two protocols on one model:

- KServe v1 (``POST /v1/models/crops:predict``), the contract `crops.world.online.HttpRetriever`
  and the A/B job rely on: ``{"instances": [{"query": str, "top_k": int}]}`` answered by
  ``{"predictions": [{"video_ids": [...], "scores": [...]}]}``; a row has fewer than ``top_k``
  entries only when the index holds fewer videos.
- Open inference protocol v2 (``POST /v2/models/crops/infer``): input ``query`` BYTES [n],
  optional ``top_k`` (INT32/INT64 [1] input or request parameter); outputs ``video_ids`` INT64
  [n, k] and ``scores`` FP32 [n, k], k = min(top_k, index size). A tensor must be rectangular,
  so a slot the index could not fill (an approximate index may find fewer than k) holds
  video id -1 and score 0.0: JSON has no -inf.

Bad requests raise `kserve.errors.InvalidInput`, which the server answers with HTTP 400.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput, ModelNotReady

from crops.index.retriever import DenseRetriever
from crops.index.store import model_hash
from crops.serve import reqlog
from crops.serve.request_parsing import Limits, Parsed, parse_v1, parse_v2

DEFAULT_NAME = "crops"


def _usable_id(value: str) -> bool:
    return len(value) <= reqlog.MAX_REQUEST_ID and value.isprintable()


class RetrievalModel(Model):
    """Dense retrieval behind KServe; ``ready`` only once model and index are loaded and agree."""

    def __init__(
        self,
        model_dir: str | Path,
        index_dir: str | Path,
        name: str = DEFAULT_NAME,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(name)
        self.model_dir, self.index_dir = Path(model_dir), Path(index_dir)
        self.limits = limits or Limits()
        self.retriever: DenseRetriever | None = None
        self.model_hash: str | None = None

    def load(self) -> bool:
        """Load the query tower and the index; refuses an index built with another model."""
        self.retriever = DenseRetriever.load(self.model_dir, self.index_dir, check_model=True)
        # the index names its model's hash (checked above); an older index without one: hash
        self.model_hash = self.retriever.index.manifest.get("model_hash") or model_hash(
            self.model_dir
        )
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        """v2 model metadata (``GET /v2/models/crops``); -1 is a variable dimension."""
        return [
            {"name": "query", "datatype": "BYTES", "shape": [-1]},
            {"name": "top_k", "datatype": "INT64", "shape": [1]},
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {"name": "video_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        ]

    def search(self, parsed: Parsed) -> list[tuple[np.ndarray, np.ndarray]]:
        """(scores, ids) per query; queries sharing a top_k are searched together.

        Queries are embedded in one batch; each top_k is its own index search, so a query's
        answer is exactly what `DenseRetriever.search` gives for that k (ties included).
        """
        if self.retriever is None or not self.ready:
            raise ModelNotReady(self.name, "the model and index are not loaded")
        vectors = self.retriever.model.embed(parsed.queries, side="query")
        rows: dict[int, list[int]] = defaultdict(list)
        for i, k in enumerate(parsed.top_ks):
            rows[k].append(i)
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(parsed.queries)  # type: ignore[list-item]
        for k, idx in rows.items():
            scores, ids = self.retriever.index.search(vectors[idx], k)
            for j, i in enumerate(idx):
                out[i] = (scores[j], ids[j])
        return out

    def predict(
        self,
        payload: dict[str, Any] | InferRequest | bytes,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Answer a v1 body (a dict) or a v2 `InferRequest`.

        Inside `crops serve`, the request's `reqlog.Record` gets the queries and results (for
        the request log); an ``x-user-id`` header that is not an integer is a 400.
        """
        record = reqlog.current()
        try:
            if record is not None and record.user_id_error:
                raise InvalidInput(record.user_id_error)
            if isinstance(payload, InferRequest):
                return self._predict_v2(payload, record)
            return self._predict_v1(payload, record)
        except InvalidInput as exc:
            if record is not None:
                record.error = str(exc)
            raise

    def _predict_v1(self, payload: Any, record: reqlog.Record | None) -> dict[str, Any]:
        parsed = parse_v1(payload, self.limits)
        if record is not None:
            record.queries, record.top_ks = parsed.queries, parsed.top_ks
        predictions, results = [], []
        for scores, ids in self.search(parsed):
            found = ids >= 0
            ids, scores = ids[found], scores[found]
            predictions.append({"video_ids": ids.tolist(), "scores": scores.tolist()})
            results.append((ids, scores))  # arrays: the log writer builds columns from them
        if record is not None:
            record.results = results
        # in the body too: KServe's payload logger forwards bodies, not response headers, and
        # `crops logsink` reads the serving model's hash from here
        return {"predictions": predictions, "model_hash": self.model_hash}

    def _predict_v2(self, request: InferRequest, record: reqlog.Record | None) -> InferResponse:
        body_id = request.id
        if record is not None and body_id and record.generated_id and _usable_id(body_id):
            record.request_id = body_id  # no x-request-id header: the body's id is the id
        if request.request_outputs:
            names = {"video_ids", "scores"}
            for out in request.request_outputs:
                if out.name not in names:
                    raise InvalidInput(
                        f"unknown output {out.name!r} requested (outputs: scores, video_ids)"
                    )
        parsed = parse_v2(request, self.limits)
        if record is not None:
            record.queries, record.top_ks = parsed.queries, parsed.top_ks
        results = self.search(parsed)
        ids = np.stack([r[1] for r in results]).astype(np.int64)
        scores = np.stack([r[0] for r in results]).astype(np.float32)
        scores[ids < 0] = 0.0
        shape = list(ids.shape)
        if record is not None:
            record.results = [(i[i >= 0], s[i >= 0]) for i, s in zip(ids, scores, strict=True)]
        response_id = request.id or (record.request_id if record is not None else None)
        return InferResponse(
            response_id=response_id or uuid.uuid4().hex,
            model_name=self.name,
            infer_outputs=[
                InferOutput("video_ids", shape, "INT64", data=ids),
                InferOutput("scores", shape, "FP32", data=scores),
            ],
            requested_outputs=request.request_outputs,
            parameters={"model_hash": self.model_hash} if self.model_hash else None,
        )
