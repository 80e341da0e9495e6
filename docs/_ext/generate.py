"""Parts of the documentation generated at build time, so that they follow the code and the data.

* ``_generated/config.md``: the configuration keys, defaults and comments of
  ``dask_vecops/vecops.yaml``.
* ``_generated/ufuncs.md``: one ``autofunction`` entry per ufunc in ``dask_vecops.ufuncs``
  (autodoc's ``automodule`` skips ufunc objects, which are not Python functions).
* ``_generated/benchmarks.md`` and its PNG plots: figures drawn from the measurements in
  ``benchmarks/results/*.json`` and from tables of ``benchmarks/RESULTS.md``. A plot is drawn only
  from numbers found there; a source that is missing or changed shape leaves its plot out, and
  the page says so, instead of inventing anything.

Run by ``docs/conf.py`` when the build starts; ``python docs/_ext/generate.py`` runs it alone.
Files are only rewritten when their content changes, each by an atomic rename.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_all(docs: Path) -> None:
    out = docs / "_generated"
    out.mkdir(exist_ok=True)
    _write(out / "config.md", config_table(REPO / "dask_vecops" / "vecops.yaml"))
    _write(out / "ufuncs.md", ufunc_entries())
    _write(out / "benchmarks.md", benchmark_plots(REPO / "benchmarks", out))


def _write(path: Path, data: str | bytes) -> None:
    data = data.encode() if isinstance(data, str) else data
    if path.exists() and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ---- configuration -------------------------------------------------------------------------


def config_table(yaml_path: Path) -> str:
    """A Markdown table of every key under ``vecops:``, its default and the comment above it."""
    text = yaml_path.read_text()
    defaults = yaml.safe_load(text)["vecops"]
    comments, pending = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
        elif re.match(r"^  [A-Za-z0-9_-]+:", line):  # a key directly under vecops:
            comments[line.split(":")[0].strip()] = " ".join(pending)
            pending = []
        elif stripped:
            pending = []
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, value in defaults.items():
        meaning = comments.get(key, "").replace("|", "\\|")
        rows.append(f"| `vecops.{key}` | `{_yaml_value(value)}` | {meaning} |")
    return "\n".join(rows) + "\n"


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# ---- ufuncs --------------------------------------------------------------------------------


def ufunc_entries() -> str:
    from dask_vecops import ufuncs

    names = [n for n in ufuncs.__all__ if isinstance(getattr(ufuncs, n), np.ufunc)]
    lines = ["```{eval-rst}"] + [f".. autofunction:: dask_vecops.ufuncs.{n}\n" for n in names]
    return "\n".join(lines) + "```\n"


# ---- benchmark plots -----------------------------------------------------------------------


def benchmark_plots(bench: Path, out: Path) -> str:
    """Draw the plots; return the Markdown that shows them (with their sources) or says why not."""
    import matplotlib

    matplotlib.use("Agg")
    parts, missing = [], []
    for draw in (_cpu_case1_plot, _gpu_plot):
        try:
            parts.append(draw(bench, out))
        except _NoData as why:
            missing.append(str(why))
    if missing:
        parts.append("Plots left out (their numbers were not found):\n\n"
                     + "\n".join(f"* {m}" for m in missing) + "\n")
    return "\n".join(parts)


class _NoData(Exception):
    pass


def _figure(name: str, fig, out: Path, caption: str, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    _write(out / name, buf.getvalue())
    return f"```{{figure}} /_generated/{name}\n:alt: {alt}\n:width: 100%\n\n{caption}\n```\n"


def _markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first table under the first heading that starts with ``heading``."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
    if start is None:
        raise _NoData(f"no section {heading!r}")
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif table:
            break
    if len(table) < 3:
        raise _NoData(f"no table under {heading!r}")
    header, rows = table[0], table[2:]
    return [dict(zip(header, row)) for row in rows]


def _cpu_case1_plot(bench: Path, out: Path) -> str:
    import matplotlib.pyplot as plt

    results = bench / "RESULTS.md"
    heading = "### Case 1:"
    if not results.exists():
        raise _NoData("benchmarks/RESULTS.md is missing")
    text = results.read_text()
    rows = _markdown_table(text, heading)
    title = next(l for l in text.splitlines() if l.startswith(heading)).removeprefix("### ")
    try:
        data = [(r["contender"], float(r["seconds"])) for r in rows]
    except (KeyError, ValueError):
        raise _NoData(f"the table under {heading!r} has no numeric 'seconds' column") from None
    data.sort(key=lambda item: item[1])
    names, seconds = zip(*data)
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(names) + 1.2))
    colours = ["#1f77b4" if n.startswith("dask-vecops") else "#aaaaaa" for n in names]
    ax.barh(range(len(names)), seconds, color=colours)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale; lower is better)")
    for i, s in enumerate(seconds):
        ax.text(s, i, f" {s:.2f} s", va="center", fontsize=8)
    ax.set_xlim(right=max(seconds) * 4)
    ax.set_title(title, fontsize=10)
    caption = (
        f"Wall time of each contender in *{title}* of `benchmarks/RESULTS.md` (one run on the "
        "project's shared 2-core VM; blue: dask-vecops). Drawn at build time from that table."
    )
    return _figure("bench-cpu-case1.png", fig, out, caption, "CPU top-k benchmark, case 1")


def _gpu_plot(bench: Path, out: Path) -> str:
    import matplotlib.pyplot as plt

    files = sorted((bench / "results").glob("gpu-*.json"))
    if not files:
        raise _NoData("no benchmarks/results/gpu-*.json")
    path = files[-1]
    try:
        doc = json.loads(path.read_text())
        rows = [r for r in doc["rows"] if "k" in r and "threads" not in r and "seconds" in r]
        gpu = doc.get("gpu", "GPU")
    except (ValueError, KeyError, TypeError):
        raise _NoData(f"{path.name} is not in the expected shape") from None
    ks = sorted({r["k"] for r in rows})
    names = list(dict.fromkeys(r["name"] for r in rows))
    if not ks or not names:
        raise _NoData(f"{path.name} holds no timed rows")
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(names) + 1.5))
    height = 0.8 / len(ks)
    for j, k in enumerate(ks):
        ms = [next((1e3 * r["seconds"] for r in rows if r["name"] == n and r["k"] == k), np.nan)
              for n in names]
        pos = np.arange(len(names)) + j * height
        ax.barh(pos, ms, height=height, label=f"k = {k:,}")
        for p, v in zip(pos, ms):
            if np.isfinite(v):
                ax.text(v, p, f" {v:.1f} ms", va="center", fontsize=8)
    ax.set_yticks(np.arange(len(names)) + height * (len(ks) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds (lower is better)")
    ax.set_xlim(right=ax.get_xlim()[1] * 1.15)
    ax.legend(loc="lower right", fontsize=8)
    size = ", ".join(
        f"{label} {doc[key]:,}" for key, label in
        (("queries", "queries"), ("features", "features"), ("chunk_rows", "database chunks of"))
        if isinstance(doc.get(key), int)
    )
    ax.set_title(f"{gpu}: exact top-k, {size} rows", fontsize=10)
    caption = (
        f"GPU times from `benchmarks/results/{path.name}` (written by `benchmarks/gpu.py`; the "
        "database size is in the GPU section of the results below), drawn at build time. The "
        "first bar is cuBLAS's matrix product alone, a floor for every contender."
    )
    return _figure("bench-gpu.png", fig, out, caption, "GPU top-k benchmark")


if __name__ == "__main__":
    write_all(REPO / "docs")
