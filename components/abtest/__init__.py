from crops.components.abtest.component import abtest

__all__ = ["abtest"]
