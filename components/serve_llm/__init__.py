from crops.components.serve_llm.component import release_llm, serve_llm

__all__ = ["release_llm", "serve_llm"]
