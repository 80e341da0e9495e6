"""Dask graphs built from the chunk protocol; the backend's functions are handed in by the api."""

from .normalize import normalize
from .similarity import similarity
from .topk import topk

__all__ = ["normalize", "similarity", "topk"]
