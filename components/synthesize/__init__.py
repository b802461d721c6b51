from components.synthesize.component import synthesize

__all__ = ["synthesize"]
