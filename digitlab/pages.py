"""HTML pieces shared by every page digitlab writes (report.html, the leaderboard, diagnostics).

    table([["7", "9", 3]], ["true", "predicted", "times"])
    img(png_bytes, "confusion matrix")     # embedded as a data URL: the page opens from disk
"""
from __future__ import annotations

import base64
import html

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.6em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee} pre{background:#f7f7f7;padding:.8em;overflow-x:auto}
.kpi{display:inline-block;margin:0 1.5em 1em 0} .kpi b{font-size:1.6em;display:block}
.pair{display:flex;flex-wrap:wrap;gap:1em} .pair img{flex:1 1 420px;max-width:540px}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.5em 1em}
"""


def esc(value) -> str:
    return html.escape(str(value))


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table(rows, header) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML document."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>")
