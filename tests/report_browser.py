"""Open a ``snakemake --report`` HTML file in headless Chromium and read back what rendered.

Snakemake's report is a single page whose results (``var results = {path:
{mime_type, data_uri, caption, ...}}``) the page's own JavaScript renders.
:func:`render_report` copies the page, adds one script that waits for the
app's navigation bar, then loads every image result into an ``<img>`` (its
natural size is known once it decoded) and parses every HTML result with the browser's
``DOMParser``, and writes what it found into the DOM, which Chromium dumps
(``--dump-dom``). Chromium is Debian's ``chromium`` package.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")

_CHECK = r"""
<script id="pmsid-check-script">
window.addEventListener("load", async () => {
  const wait = (ms) => new Promise((done) => setTimeout(done, ms));
  for (let i = 0; i < 100 && !document.querySelector("nav"); i++) await wait(100);
  const text = (uri) =>
    new TextDecoder().decode(Uint8Array.from(atob(uri.split("base64,")[1]), (c) => c.charCodeAt(0)));
  const found = {};
  for (const [path, r] of Object.entries(results)) {
    const entry = { mime: r.mime_type, caption: (r.caption || "").replace(/<[^>]+>/g, "").trim() };
    if (r.mime_type.startsWith("image/")) {
      const img = new Image();
      try {
        // onload, not img.decode(): under --virtual-time-budget decode() of a large image never settles.
        await new Promise((loaded, failed) => {
          img.onload = loaded;
          img.onerror = () => failed(new Error("the image did not decode"));
          img.src = r.data_uri;
        });
        entry.width = img.naturalWidth;
        entry.height = img.naturalHeight;
      } catch (err) {
        entry.error = String(err);
      }
    } else if (r.mime_type === "text/html") {
      const doc = new DOMParser().parseFromString(text(r.data_uri), "text/html");
      const table = doc.querySelector("table");
      entry.header = table ? [...table.querySelectorAll("thead th")].map((th) => th.textContent) : [];
      entry.rows = table ? table.querySelectorAll("tbody tr").length : 0;
      entry.table_caption = table && table.caption ? table.caption.textContent : "";
    }
    found[path] = entry;
  }
  const nav = document.querySelector("nav");
  const out = document.createElement("pre");
  out.id = "pmsid-check";
  out.textContent = JSON.stringify({ nav: nav ? nav.textContent : null, results: found });
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str | None:
    """The first Chromium executable on PATH, or None."""
    return next((found for name in CHROMIUM if (found := shutil.which(name))), None)


def render_report(report_html: Path, timeout: int = 180) -> dict:
    """``{"nav": text of the rendered navigation, "results": {path: what rendered}}``.

    Each image result has ``width`` and ``height`` (or ``error``); each HTML
    result its table's ``header``, ``rows`` and ``table_caption``; every
    result its ``mime`` and ``caption``.
    """
    browser = chromium()
    if browser is None:
        raise FileNotFoundError(f"no Chromium on PATH (tried {', '.join(CHROMIUM)})")
    checked = report_html.with_name(f"checked_{report_html.name}")
    page = report_html.read_text(encoding="utf-8")
    if "</body>" not in page:
        raise ValueError(f"{report_html}: no </body>; not a snakemake --report page")
    # The last </body>: the page's bundled scripts hold the string too.
    head, _, tail = page.rpartition("</body>")
    checked.write_text(head + _CHECK + "</body>" + tail, encoding="utf-8")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000", "--dump-dom",
         checked.resolve().as_uri()],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    found = re.search(r'<pre id="pmsid-check">(.*?)</pre>', result.stdout, flags=re.S)
    if found is None:
        raise RuntimeError(f"Chromium rendered no check output (exit {result.returncode}): {result.stderr[-2000:]}")
    return json.loads(html.unescape(found[1]))
