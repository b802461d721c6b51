"""The KServe retrieval endpoint: `RetrievalModel` (predictor.py), request checks
(request_parsing.py) and the server runner behind `crops serve` (server.py)."""

from __future__ import annotations

import sys


def _import_kserve() -> None:
    """Import kserve with a bare ``sys.argv``: ``kserve.model_server`` parses the command line
    at import time, and a `crops serve --model ... --workers ...` line is not meant for it."""
    if "kserve" in sys.modules:
        return
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve  # noqa: F401
    finally:
        sys.argv = argv


_import_kserve()
