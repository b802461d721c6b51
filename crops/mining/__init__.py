"""The data engine: miners, relevance filter, LLM synthesis and Hierarchical Label Assignment."""
