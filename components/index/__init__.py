from crops.components.index.component import index

__all__ = ["index"]
