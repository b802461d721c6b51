from crops.components.synthesize.component import release_llm, synthesize

__all__ = ["release_llm", "synthesize"]
