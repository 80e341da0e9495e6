"""Sphinx configuration for the dask-vecops documentation site (``make docs``).

The Markdown pages are read by MyST (through myst-nb, which also renders the quick-start
notebook without executing it: the test suite executes it). Parts that would otherwise go stale
are generated at build time by ``_ext/generate.py`` into ``docs/_generated/`` (not tracked): the
configuration table from ``dask_vecops/vecops.yaml``, the list of Rust ufuncs for the API
reference, and the benchmark plots from ``benchmarks/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import dask_vecops  # noqa: E402  (the installed package: `make docs` builds it first)
import generate  # noqa: E402

project = "dask-vecops"
author = "the dask-vecops developers"
copyright = "the dask-vecops developers"
release = dask_vecops.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "numpydoc",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# MyST: heading anchors so that `page.md#section` links resolve; colon fences for directives.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# The notebook is executed by tests/test_docs.py, never during the build.
nb_execution_mode = "off"

# API reference: numpydoc renders the docstrings; autodoc imports the installed package.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"dask-vecops {release}"
html_static_path = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": [],
}
# Pages without sub-pages get no (empty) section navigation on the left.
html_sidebars = {page: [] for page in ("index", "api", "design", "benchmarks")}


def _generate(app):
    generate.write_all(DOCS)


def setup(app):
    app.connect("builder-inited", _generate)
