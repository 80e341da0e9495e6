"""Numba CUDA kernels for dask-vecops' GPU backend.

They know NumPy/CuPy arrays and nothing of Dask or of ``dask_vecops``: row norms and
normalisation, distance tiles computed from differences, and exact top-k selection per row
(:mod:`numba_kernels.select`, after a first pass that cuts long rows to a few candidates for
small k: :mod:`numba_kernels.scan`). :mod:`numba_kernels.launch` allocates outputs of the
input's kind and launches them. Importing this package needs Numba; it never needs a GPU or CuPy, and under
Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run on NumPy arrays on the CPU.
"""
