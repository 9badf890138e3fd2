"""Headless Chromium for the report tests: find (or apt-install) it, screenshot a page, probe one.

Chromium comes from Debian's `chromium` package (/usr/bin/chromium). `ensure_chromium()` installs it
with apt-get when the tests run as root, skips with install instructions otherwise, and fails with
apt's last line when the install breaks. Every launch gets a fresh profile directory and no network
extras. `probe_page()` serves the report's folder on 127.0.0.1 (file:// frames are cross-origin in
Chromium), opens a small wrapper page from the same origin that loads the report in an iframe and
writes what it finds (image counts, sizes, script count, errors) into the DOM, dumps that DOM after a
virtual-time budget, and adds the page's console messages, which Chromium logs on stderr.

    binary = ensure_chromium()
    shot = screenshot(binary, Path("out/report.html"), tmp / "shot.png")
    stats = screenshot_stats(shot)          # distinct colours, non-white share, plot-coloured tiles
    found = probe_page(binary, Path("out"), "report.html")   # {"total": 9, "loaded": 9, ...}
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = (
    "headless Chromium is not installed; install it with "
    "`sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium` (Debian package)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PROBE_PATH = "/__probe__.html"
# A console message as Chromium logs it with --enable-logging=stderr --v=0:
# [pid:tid:date/time.us:INFO:CONSOLE:62] "Uncaught ReferenceError: x is not defined", source: http://... (62)
_CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\] (.*)$")
_RESULT = re.compile(r'<pre id="result">(.*?)</pre>', re.S)

_PROBE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>pending</title></head><body>
<pre id="result">pending</pre>
<script>
var errors = [];
window.addEventListener("error", function (e) { errors.push(String(e.message || e)); }, true);
var frame = document.createElement("iframe");
frame.style.width = "1400px";
frame.style.height = "3000px";
frame.onload = function () {
  var out = {};
  try {
    var doc = frame.contentDocument;
    var imgs = Array.prototype.slice.call(doc.images);
    out.total = imgs.length;
    out.loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    out.shown = imgs.filter(function (i) { return i.getBoundingClientRect().width > 0; }).length;
    out.sizes = imgs.map(function (i) { return [i.naturalWidth, i.naturalHeight]; });
    out.broken = imgs.filter(function (i) { return !(i.naturalWidth > 0); })
      .map(function (i) { return (i.getAttribute("alt") || "") + " <" + i.src.slice(0, 40) + ">"; });
    out.scripts = doc.scripts.length;
    out.title = doc.title;
  } catch (err) {
    errors.push("probe: " + err);
  }
  out.errors = errors;
  document.getElementById("result").textContent = JSON.stringify(out);
  document.title = "probe done";
};
frame.src = "__PAGE__";
document.body.appendChild(frame);
</script>
</body></html>
"""


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@functools.lru_cache(maxsize=1)
def _install() -> str | None:
    """apt-get update + install chromium once per process; returns an error line, or None on success."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        (["apt-get", "update"], 900),
        (["apt-get", "install", "-y", "--no-install-recommends", "chromium"], 1800),
    )
    for argv, timeout in commands:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(argv)}` did not finish within {timeout} s"
        if done.returncode != 0:
            return f"`{' '.join(argv)}` exited {done.returncode}: {_tail(done.stderr or done.stdout)}"
    return None


def ensure_chromium() -> str:
    """Path of `chromium` on PATH; apt-installs it when missing and running as root (else skip)."""
    found = shutil.which("chromium")
    if found:
        return found
    root = getattr(os, "geteuid", lambda: -1)() == 0
    if not root or shutil.which("apt-get") is None:
        pytest.skip(INSTALL_HINT)
    error = _install()
    if error is not None:
        pytest.fail(f"installing chromium failed: {error}", pytrace=False)
    found = shutil.which("chromium")
    if not found:
        pytest.fail("apt-get installed chromium but no `chromium` is on PATH", pytrace=False)
    return found


def run_chromium(binary: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile directory; returns the finished process."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        argv = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(binary: str, page: Path, png: Path, *, size: tuple[int, int] = (1400, 3000)) -> Path:
    """Screenshot a local HTML file (file:// URL) into `png`; fails the test if nothing was written."""
    done = run_chromium(
        binary, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()
    )
    if not png.is_file():
        pytest.fail(
            f"chromium wrote no screenshot (exit {done.returncode}): {_tail(done.stderr)}", pytrace=False
        )
    return png


def screenshot_stats(png: Path, *, tile: int = 100) -> dict[str, float]:
    """Colour statistics of a screenshot: distinct colours, share of non-white pixels, share of
    saturated (plot-coloured: blue/orange marks and bars, not black/grey text) pixels, and how many
    `tile`-pixel squares are at least 5 % saturated."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    packed = (red << 16) | (green << 8) | blue
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 80
    h, w = saturated.shape[0] // tile * tile, saturated.shape[1] // tile * tile
    tiles = saturated[:h, :w].reshape(h // tile, tile, w // tile, tile).mean(axis=(1, 3))
    return {
        "distinct_colours": int(np.unique(packed).size),
        "non_white": float((rgb.min(axis=2) < 245).mean()),
        "saturated": float(saturated.mean()),
        "blue": float((saturated & (blue > 120) & (blue - red > 60)).mean()),
        "orange": float((saturated & (red > 200) & (red - blue > 100) & (green > 80) & (green < 190)).mean()),
        "plot_tiles": int((tiles >= 0.05).sum()),
    }


class _Handler(http.server.SimpleHTTPRequestHandler):
    probe = b""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        if self.path.split("?")[0] != PROBE_PATH:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.probe)))
        self.end_headers()
        self.wfile.write(self.probe)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass


@contextlib.contextmanager
def serve(directory: Path, *, probe: str = "") -> Iterator[str]:
    """Serve `directory` (and the probe page at PROBE_PATH) on 127.0.0.1:<free port>; yields the base URL."""
    handler = functools.partial(
        type("Handler", (_Handler,), {"probe": probe.encode("utf-8")}), directory=str(directory)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def probe_page(binary: str, directory: Path, page: str, *, budget_ms: int = 5000) -> dict:
    """Load `directory/page` in an iframe of a same-origin wrapper and report what the browser saw:
    {"total", "loaded", "shown", "sizes", "broken", "scripts", "title", "errors", "console"}."""
    wrapper = _PROBE_HTML.replace("__PAGE__", page)
    with serve(directory, probe=wrapper) as base:
        done = run_chromium(
            binary,
            "--enable-logging=stderr",
            "--v=0",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            base + PROBE_PATH,
        )
    match = _RESULT.search(done.stdout)
    text = html.unescape(match.group(1)) if match else ""
    if not text.startswith("{"):
        pytest.fail(
            f"the probe page did not finish (exit {done.returncode}, result {text[:80]!r}): {_tail(done.stderr)}",
            pytrace=False,
        )
    result = json.loads(text)
    result["console"] = [m.group(1) for line in done.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return result
