from crops.components.ingest.component import ingest

__all__ = ["ingest"]
