"""Numba CUDA kernels for dask-vecops' GPU backend.

They know NumPy/CuPy arrays and nothing of Dask or of ``dask_vecops``. The kernels themselves
arrive with the GPU issue; importing this package never needs a GPU, CuPy or Numba.
"""
