"""CroPS: cross-perspective positive samples for dense retrieval in short-video search."""

__version__ = "0.1.0"
