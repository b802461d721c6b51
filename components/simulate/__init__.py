from crops.components.simulate.component import simulate

__all__ = ["simulate"]
