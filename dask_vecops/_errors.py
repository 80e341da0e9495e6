"""The exceptions dask-vecops raises beyond the built-in ones."""


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


class NonFiniteError(ValueError):
    """A row holds NaN or inf and ``nan_policy="raise"``; the message names the global row."""
