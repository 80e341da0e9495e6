"""Rich display in Jupyter: ``dv.backends()`` renders as an HTML table."""

from html.parser import HTMLParser

import dask_vecops as dv
from dask_vecops.backends.registry import BackendInfo, BackendTable


class _Cells(HTMLParser):
    """The text of each table row's cells, header row included."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _table(html: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(html)
    parser.close()
    return parser.rows


def test_backends_render_as_an_html_table():
    table = dv.backends()
    html = table._repr_html_()
    assert html.startswith("<table") and html.endswith("</table>")
    rows = _table(html)
    assert rows[0] == ["backend", "available", "reason"]
    assert rows[1:] == [[b.name, "yes" if b.available else "no", b.reason] for b in table]
    assert [r[0] for r in rows[1:]] == ["rust", "cuda", "scipy", "numpy"]


def test_html_escapes_reasons_and_text_repr_is_unchanged():
    table = BackendTable([
        BackendInfo("cuda", False, "no <GPU> & no 'driver'"),
        BackendInfo("numpy", True, ""),
    ])
    html = table._repr_html_()
    assert "<GPU>" not in html and "&lt;GPU&gt; &amp; no &#x27;driver&#x27;" in html
    assert _table(html)[1:] == [["cuda", "no", "no <GPU> & no 'driver'"], ["numpy", "yes", ""]]
    assert repr(table).splitlines() == [
        "backend  available  reason",
        "cuda     no         no <GPU> & no 'driver'",
        "numpy    yes        ",  # the columns line up under the header
    ]
