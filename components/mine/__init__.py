from crops.components.mine.component import mine

__all__ = ["mine"]
