"""Render a report document (a list of blocks) as Markdown or as one self-contained HTML page.

A document is a list of tuples: `("h1"|"h2"|"h3", text)`, `("p", text)`, `("list", [text, ...])`,
`("table", headers, rows)` and `("img", path, caption)`. Text may use `code` and **bold**. The HTML
page inlines its CSS and embeds every image as a base64 PNG, so it opens offline from anywhere
(no scripts, fonts or links to other files).

Example::

    doc = [("h1", "Report"), ("p", "Pareto front marked **★**"), ("img", Path("a.png"), "caption")]
    Path("report.html").write_text(to_html(doc, "Report"))
    Path("report.md").write_text(to_markdown(doc, base=Path(".")))
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2328;
  max-width: 1180px; margin: 2em auto; padding: 0 1.2em; line-height: 1.5; background: #fff; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
code { background: #f2f4f7; padding: .1em .35em; border-radius: 4px; font-size: 90%; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: 90%; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; }
th { background: #f2f4f7; text-align: center; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; }
tr:nth-child(even) td { background: #f8f9fb; }
td.star { color: #b7791f; font-weight: bold; text-align: center; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; border-radius: 4px; }
figcaption { color: #57606a; font-size: 90%; margin-top: .3em; }
ul { padding-left: 1.4em; }
.meta { color: #57606a; font-size: 90%; }
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def inline(text: str) -> str:
    """Escape `text` for HTML, then turn `code` and **bold** into tags."""
    out = html.escape(str(text), quote=False)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def image_data_uri(path: str | Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _table_html(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="star">{inline(c)}</td>' if str(c).startswith("★") else f"<td>{inline(c)}</td>"
            for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(doc: list[tuple[Any, ...]], title: str, *, meta: str = "") -> str:
    """One self-contained HTML page for `doc` (images embedded as base64 PNG, CSS inline)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    for block in doc:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{inline(block[1])}</{kind}>")
            if kind == "h1" and meta:
                parts.append(f'<p class="meta">{inline(meta)}</p>')
        elif kind == "p":
            parts.append(f"<p>{inline(block[1])}</p>")
        elif kind == "list":
            items = "".join(f"<li>{inline(item)}</li>" for item in block[1])
            parts.append(f"<ul>{items}</ul>")
        elif kind == "table":
            parts.append(_table_html(block[1], block[2]))
        elif kind == "img":
            alt = html.escape(block[2], quote=True)
            parts.append(
                f'<figure><img alt="{alt}" src="{image_data_uri(block[1])}">'
                f"<figcaption>{inline(block[2])}</figcaption></figure>"
            )
        else:
            raise ValueError(f"unknown report block {kind!r}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: list[tuple[Any, ...]], *, base: Path, meta: str = "") -> str:
    """The same document as Markdown; images are linked relative to `base` (the report's folder)."""
    from modelscale.report.tables import table

    parts: list[str] = []
    for block in doc:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + block[1])
            if kind == "h1" and meta:
                parts.append(f"_{meta}_")
        elif kind == "p":
            parts.append(block[1])
        elif kind == "list":
            parts.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            parts.append(table([_md_cell(h) for h in block[1]], [[_md_cell(c) for c in r] for r in block[2]]))
        elif kind == "img":
            rel = Path(os.path.relpath(Path(block[1]).resolve(), Path(base).resolve())).as_posix()
            parts.append(f"![{block[2]}]({rel})\n\n_{block[2]}_")
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return "\n\n".join(parts) + "\n"
