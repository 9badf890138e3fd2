"""The report document renders to self-contained HTML (embedded PNG, escaped text) and to Markdown."""

import base64
import struct
import zlib
from pathlib import Path

from modelscale.report.html import inline, to_html, to_markdown


def _tiny_png(path: Path) -> Path:
    """A valid 1x1 grey PNG written by hand (no plotting library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00\x80"  # filter byte, one grey pixel
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def test_html_embeds_images_and_escapes_text(tmp_path):
    (tmp_path / "plots").mkdir()
    img = _tiny_png(tmp_path / "plots" / "a.png")
    doc = [
        ("h1", "Report <1>"),
        ("p", "uses `code` and **bold**; <script>alert(1)</script>"),
        ("table", ["Model", "Pareto"], [["a|b", "★"], ["c", ""]]),
        ("img", img, "a caption"),
        ("list", ["one", "two"]),
    ]
    page = to_html(doc, "T <x>", meta="made now")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert '<td class="star">★</td>' in page
    embedded = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(embedded) == img.read_bytes()
    assert 'src="http' not in page and "href=" not in page and "<link" not in page


def test_markdown_links_images_relative_to_the_report(tmp_path):
    (tmp_path / "plots").mkdir()
    img = _tiny_png(tmp_path / "plots" / "a.png")
    md = to_markdown(
        [("h2", "Sizes"), ("table", ["Model", "MB"], [["a|b", "1.0"]]), ("img", img, "cap")], base=tmp_path
    )
    assert "## Sizes" in md
    assert "| a\\|b | 1.0 |" in md
    assert "![cap](plots/a.png)" in md


def test_inline_formatting():
    assert inline("a `x<y` **b**") == "a <code>x&lt;y</code> <strong>b</strong>"
