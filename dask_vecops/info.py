"""What this installation can run, and with which settings: ``dask-vecops info``.

:func:`collect` gathers package versions, the platform, the CPU's SIMD features the Rust kernels
dispatch on, the Rust kernels' thread setting, the GPU / CUDA state, every backend with the reason
it cannot run (if it cannot), and the effective ``vecops.*`` configuration with where each value
came from: the packaged default (``vecops.yaml``), a YAML file in Dask's config paths, a
``DASK_VECOPS__...`` environment variable, or code (``dask.config.set``). :func:`format_text`
lays it out as aligned text.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import dask.config

from . import _config
from .backends import registry

# (import name, distribution names to try): cupy ships as cupy-cudaXXx wheels.
PACKAGES = (
    ("dask_vecops", ("dask-vecops",)),
    ("numpy", ("numpy",)),
    ("dask", ("dask",)),
    ("distributed", ("distributed",)),
    ("scipy", ("scipy",)),
    ("numba", ("numba",)),
    ("cupy", ("cupy", "cupy-cuda12x", "cupy-cuda11x", "cupy-cuda13x")),
    ("xarray", ("xarray",)),
    ("zarr", ("zarr",)),
)
# The x86 features the Rust kernels dispatch on at run time (rust_ufuncs/src/kernels/simd/mod.rs).
SIMD_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16")
DEFAULTS_SOURCE = "default (dask_vecops/vecops.yaml)"
CODE_SOURCE = "code (dask.config.set)"


def collect() -> dict:
    """Everything ``dask-vecops info`` reports, as JSON-ready data.

    >>> from dask_vecops import info
    >>> report = info.collect()
    >>> list(report)
    ['versions', 'platform', 'cpu', 'rust', 'gpu', 'backends', 'config']
    >>> [b["name"] for b in report["backends"]]
    ['rust', 'cuda', 'scipy', 'numpy']
    """
    return {
        "versions": versions(),
        "platform": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "executable": sys.executable,
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "cpu": cpu_features(),
        "rust": rust_state(),
        "gpu": gpu_state(),
        "backends": [
            {"name": b.name, "available": b.available, "reason": b.reason}
            for b in registry.backends()
        ],
        "config": config_sources(),
    }


def versions() -> dict[str, str]:
    """Each package's version, or "not installed".

    >>> from dask_vecops import info
    >>> info.versions()["numpy"] != "not installed"
    True
    """
    found = {}
    for module, dists in PACKAGES:
        if importlib.util.find_spec(module) is None:
            found[dists[0]] = "not installed"
            continue
        for dist in dists:
            try:
                found[dists[0]] = version(dist)
                break
            except PackageNotFoundError:
                continue
        else:
            found[dists[0]] = str(getattr(importlib.import_module(module), "__version__", "unknown"))
    return found


def cpu_features() -> dict:
    """The SIMD features the Rust kernels dispatch on, and the kernel path they take.

    The path is the Rust extension's own answer (the best this CPU has, capped by
    ``DASK_VECOPS_ISA``); without the extension it is inferred from the CPU's flags.

    >>> from dask_vecops import info
    >>> sorted(info.cpu_features())
    ['DASK_VECOPS_ISA', 'features', 'rust_kernel_path', 'source']
    >>> sorted(info.cpu_features()["features"])
    ['avx2', 'avx512_bf16', 'avx512f', 'fma']
    """
    flags, source = _cpu_flags()
    features = {name: (name in flags) if flags is not None else None for name in SIMD_FEATURES}
    try:
        from . import ufuncs
    except ImportError:
        kernel = _inferred_path(features, flags)
    else:
        kernel, best = ufuncs.kernel_isa(), ufuncs.best_isa()
        kernel = ISA_NAMES[kernel] + ("" if kernel == best else f", capped (the CPU has {best})")
    return {"features": features, "rust_kernel_path": kernel, "source": source,
            "DASK_VECOPS_ISA": os.environ.get("DASK_VECOPS_ISA")}


# The Rust kernels' instruction sets (rust_ufuncs/src/kernels/simd/mod.rs, `Isa::name`).
ISA_NAMES = {
    "avx512bf16": "avx512bf16 (AVX-512F + FMA, bfloat16 filter)",
    "avx512": "avx512 (AVX-512F + FMA)",
    "avx2": "avx2 (AVX2 + FMA)",
    "portable": "portable",
}


def _inferred_path(features: dict, flags) -> str:
    """The kernel path the CPU's flags imply (when the extension cannot say)."""
    if flags is None:
        return "unknown"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "portable (no x86 SIMD dispatch)"
    if features["fma"] and features["avx512f"]:
        return ISA_NAMES["avx512bf16" if features["avx512_bf16"] else "avx512"]
    if features["fma"] and features["avx2"]:
        return ISA_NAMES["avx2"]
    return ISA_NAMES["portable"]


def _cpu_flags() -> tuple[set[str] | None, str]:
    """The CPU's feature flags (lower case) and where they were read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split()), "/proc/cpuinfo"
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
    except ImportError:  # pragma: no cover - NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as numpy_features
        except ImportError:
            return None, "unknown"
    names = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BF16": "avx512_bf16"}
    return {names[k] for k, on in numpy_features.items() if on and k in names}, "numpy"


def rust_state() -> dict:
    """Whether the Rust extension loads and how many threads one kernel call may use.

    >>> from dask_vecops import info
    >>> sorted(info.rust_state())
    ['DASK_VECOPS_NUM_THREADS', 'extension', 'num_threads']
    """
    env = os.environ.get("DASK_VECOPS_NUM_THREADS")
    try:
        from . import ufuncs
    except ImportError as error:
        return {"extension": f"not loaded: {error}", "num_threads": None,
                "DASK_VECOPS_NUM_THREADS": env}
    return {"extension": "loaded", "num_threads": int(ufuncs.get_num_threads()),
            "DASK_VECOPS_NUM_THREADS": env}


def gpu_state() -> dict:
    """The CUDA backend's state: why it cannot run, Numba's simulator, the device if any.

    >>> from dask_vecops import info
    >>> sorted(info.gpu_state())
    ['cuda_backend', 'device', 'numba_cuda_simulator']
    """
    reason = dict((b.name, b.reason) for b in registry.backends())["cuda"]
    state = {"cuda_backend": "available" if not reason else f"unavailable: {reason}",
             "numba_cuda_simulator": None, "device": None}
    if importlib.util.find_spec("numba") is not None:
        from numba import config

        state["numba_cuda_simulator"] = bool(config.ENABLE_CUDASIM)
    if not reason and not state["numba_cuda_simulator"]:
        try:
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"]
            state["device"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as error:  # noqa: BLE001 - a report, never a failure
            state["device"] = f"unknown ({error})"
    elif state["numba_cuda_simulator"]:
        state["device"] = "Numba CUDA simulator (NumPy on the CPU)"
    return state


# -- configuration and its sources ----------------------------------------------------------------


def config_sources() -> list[dict]:
    """Each effective ``vecops.*`` value (leaves of nested mappings) and where it came from.

    >>> import dask
    >>> from dask_vecops import info
    >>> with dask.config.set({"vecops.split-every": 4}):
    ...     [r for r in info.config_sources() if r["key"] == "vecops.split-every"]
    [{'key': 'vecops.split-every', 'value': 4, 'source': 'code (dask.config.set)'}]
    """
    effective = _flatten(dask.config.get("vecops", {}))
    layers = [(DEFAULTS_SOURCE, _flatten(_config.DEFAULTS.get("vecops", {})))]
    layers += [(f"file {path}", _flatten(cfg.get("vecops", {}))) for path, cfg in _yaml_layers()]
    layers += _env_layers()
    rows = []
    for key, value in effective.items():
        source = CODE_SOURCE
        for name, values in layers:  # the last layer giving this very value wins, as in Dask
            if key in values and values[key] == value:
                source = name
        rows.append({"key": f"vecops.{key}", "value": value, "source": source})
    return rows


def _canonical(key) -> str:
    return str(key).replace("_", "-")


def _flatten(mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``, keys with ``-`` for ``_``; empty mappings kept."""
    flat = {}
    for key, value in (mapping or {}).items():
        name = prefix + _canonical(key)
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _yaml_layers() -> list[tuple[Path, dict]]:
    """Dask's YAML config files, in the order Dask reads them, each with its contents."""
    layers = []
    for path in dask.config.paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        else:
            files = [path] if path.exists() else []
        for file in files:
            try:
                configs = dask.config.collect_yaml(paths=[str(file)])
            except Exception:  # noqa: BLE001 - Dask itself warns about a broken file
                continue
            for cfg in configs:
                if isinstance(cfg, dict) and "vecops" in cfg:
                    layers.append((file, cfg))
    return layers


def _env_layers() -> list[tuple[str, dict]]:
    """One layer per ``DASK_VECOPS__...`` environment variable, parsed as Dask parses it."""
    layers = []
    for name in sorted(os.environ):
        if name.upper().startswith("DASK_VECOPS__"):
            cfg = dask.config.collect_env({name: os.environ[name]})
            layers.append((f"environment {name}", _flatten(cfg.get("vecops", {}))))
    return layers


# -- text -----------------------------------------------------------------------------------------


def format_text(info: dict) -> str:
    """The report as aligned ``name  value`` lines under section headings.

    >>> from dask_vecops import info
    >>> print(info.format_text(info.collect()).splitlines()[0])
    versions
    """
    sections = [
        ("versions", list(info["versions"].items())),
        ("platform", list(info["platform"].items())),
        ("cpu (SIMD features the Rust kernels dispatch on)",
         [(k, _yes_no(v)) for k, v in info["cpu"]["features"].items()]
         + [("rust kernel path", info["cpu"]["rust_kernel_path"]),
            ("DASK_VECOPS_ISA", info["cpu"]["DASK_VECOPS_ISA"]),
            ("read from", info["cpu"]["source"])]),
        ("rust kernels", [("extension", info["rust"]["extension"]),
                          ("threads per kernel call", info["rust"]["num_threads"]),
                          ("DASK_VECOPS_NUM_THREADS", info["rust"]["DASK_VECOPS_NUM_THREADS"])]),
        ("gpu / cuda", [("cuda backend", info["gpu"]["cuda_backend"]),
                        ("numba cuda simulator", _yes_no(info["gpu"]["numba_cuda_simulator"])),
                        ("device", info["gpu"]["device"])]),
        ("backends", [(b["name"], ("available" if b["available"] else "unavailable")
                       + (f": {b['reason']}" if b["reason"] else ""))
                      for b in info["backends"]]),
    ]
    lines = []
    for title, rows in sections:
        lines += _aligned(title, [(str(k), "-" if v is None else str(v)) for k, v in rows])
    config = [(r["key"], _show(r["value"]), r["source"]) for r in info["config"]]
    lines.append("configuration (effective value, and where it came from)")
    key_w = max((len(k) for k, _, _ in config), default=0)
    val_w = max((len(v) for _, v, _ in config), default=0)
    lines += [f"  {k:<{key_w}}  {v:<{val_w}}  {s}" for k, v, s in config]
    return "\n".join(lines)


def _aligned(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [title, *(f"  {k:<{width}}  {v}" for k, v in rows), ""]


def _yes_no(value) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _show(value) -> str:
    return "{}" if value == {} else str(value)
