"""Encoders, losses and the Ray Train loop."""
