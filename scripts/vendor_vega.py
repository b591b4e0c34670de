"""Vendor Vega, Vega-Lite and Vega-Embed from npm into the offline page template of `dvc plots show`.

DVC's default page loads the three libraries from a CDN, so without network every Vega plot fails
(`vegaEmbed is not defined`). `.dvc/config` points `plots.html_template` at
`.dvc/plots/html/index.html`, which this script writes with the three browser builds inlined (DVC
copies the template's text into `dvc_plots/index.html`, so the page must hold the code itself).

    python scripts/vendor_vega.py            # npm ci of the pinned versions, then rewrite the page
    python scripts/vendor_vega.py --update   # after editing the pins in package.json: new lock too

The exact versions are pinned in `.dvc/plots/html/package.json` and, with their integrity hashes
and every package npm installs with them, in `package-lock.json`; `THIRD_PARTY_LICENSES.txt` holds
the licence of each of those packages.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = ROOT / ".dvc" / "plots" / "html"
# load order: vega-lite needs vega, vega-embed needs both
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}
# DVC replaces these in the template text, and an inline script must not end or comment out early
FORBIDDEN = ("</script", "<!--", "{scripts}", "{plot_divs}", "{refresh_tag}")
# The npm tarballs of vega and its sub-packages carry no licence file; this is the vega repository's.
VEGA_LICENSE = """Copyright (c) 2015-2023, University of Washington Interactive Data Lab
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors
  may be used to endorse or promote products derived from this software
  without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>tinym2net: DVC plots</title>
<!-- Written by scripts/vendor_vega.py: Vega, Vega-Lite and Vega-Embed inlined (no network needed).
     Licences: .dvc/plots/html/THIRD_PARTY_LICENSES.txt in the tinym2net repository. -->
%(scripts)s
<script>
// every plot as SVG (crisp when zoomed, text selectable and testable) instead of vega-embed's canvas
const embedWithDefaults = vegaEmbed;
vegaEmbed = (el, spec, options) => embedWithDefaults(el, spec, {renderer: "svg", ...options});
</script>
<style>
body { font-family: sans-serif; margin: 16px; display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
body > div { padding: 8px; border: 1px solid #e2e2e2; border-radius: 4px; }
img { max-width: 480px; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""
log = logging.getLogger("vendor_vega")


def npm_install(workdir: Path, update: bool) -> None:
    """Install the pinned packages (and their lock) into `workdir/node_modules`."""
    shutil.copy(HTML_DIR / "package.json", workdir / "package.json")
    if not update:
        shutil.copy(HTML_DIR / "package-lock.json", workdir / "package-lock.json")
    cmd = ["npm", "install" if update else "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    subprocess.run(cmd, cwd=workdir, check=True)


def page(modules: Path) -> str:
    """The page template with each browser build inlined after a comment naming its version and sha256."""
    blocks = []
    for name, build in BUILDS.items():
        meta = json.loads((modules / name / "package.json").read_text())
        code = (modules / name / build).read_text(encoding="utf-8").strip()
        bad = [s for s in FORBIDDEN if s in code]
        if bad:
            raise SystemExit(f"error: {name}/{build} contains {bad[0]!r}; it cannot be inlined as is")
        digest = hashlib.sha256(code.encode()).hexdigest()
        blocks.append(f"<!-- {name} {meta['version']} ({meta['license']}) {build} sha256={digest} -->\n"
                      f"<script>{code}</script>")
    return PAGE % {"scripts": "\n".join(blocks)}


def licences(workdir: Path) -> str:
    """Every installed package with its version, licence and licence text."""
    lock = json.loads((workdir / "package-lock.json").read_text())
    parts = ["Licences of Vega, Vega-Lite, Vega-Embed and every package npm installs with them (a superset\n"
             "of what their browser builds, inlined in index.html, bundle). Generated by scripts/vendor_vega.py.\n"]
    for key, info in sorted(lock["packages"].items()):
        if not key:
            continue
        folder = workdir / key
        name = key.rsplit("node_modules/", 1)[1]
        files = sorted(p for p in folder.iterdir() if p.name.lower().startswith(("license", "licence", "copying")))
        if files:
            text = files[0].read_text(encoding="utf-8", errors="replace")
        elif json.loads((folder / "package.json").read_text()).get("repository") == "vega/vega":
            text = "(no licence file in the npm package; the vega repository's LICENSE:)\n" + VEGA_LICENSE
        else:
            text = "(no licence file in the npm package)\n"
        parts.append(f"{'=' * 78}\n{name} {info['version']} ({info.get('license', 'unknown')})\n{'=' * 78}\n"
                     f"{text.strip()}\n")
    return "\n".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="npm install from package.json and rewrite the lock")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vendor-vega-") as tmp:
        workdir = Path(tmp)
        npm_install(workdir, args.update)
        outputs = {"index.html": page(workdir / "node_modules"), "THIRD_PARTY_LICENSES.txt": licences(workdir)}
        if args.update:
            outputs["package-lock.json"] = (workdir / "package-lock.json").read_text()
        for name, text in outputs.items():
            staged = HTML_DIR / f".{name}.tmp"
            staged.write_text(text, encoding="utf-8")
            staged.replace(HTML_DIR / name)
            log.info("wrote %s (%d KiB)", (HTML_DIR / name).relative_to(ROOT), len(text.encode()) // 1024)


if __name__ == "__main__":
    main()
