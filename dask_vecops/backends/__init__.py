"""Backends: one module each, adapting its kernels to the chunk protocol (``dask_vecops._protocol``)."""

from .registry import BackendInfo, backends, resolve

__all__ = ["BackendInfo", "backends", "resolve"]
