"""Compatibility module: the public ``jetspec.data.TokenDataModule``, which lives in jetspec.training.data."""

from jetspec.training.data import TokenDataModule

__all__ = ["TokenDataModule"]
