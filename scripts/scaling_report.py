"""reports/scaling.md from the scaling experiments: every DVC experiment's (`dvc exp run -S scale.profile=...`)
params, `metrics/<case>/{scale,evaluate,export,benchmark}.json`, read from its git ref, through
`tinym2net.report.scaling_md`.

    python scripts/scaling_report.py [--out reports/scaling.md] [--exp NAME ...]
"""
import argparse
import json
import logging
import subprocess
from pathlib import Path

import yaml

from tinym2net.report import scaling_md, scaling_row

log = logging.getLogger("scaling_report")
FILES = ("scale", "evaluate", "export", "benchmark")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def experiments() -> dict[str, str]:
    """Experiment name -> its git ref (refs/exps/..), newest last."""
    refs = git("for-each-ref", "--sort=creatordate", "--format=%(refname)", "refs/exps").split()
    return {ref.rsplit("/", 1)[-1]: ref for ref in refs if ref.count("/") >= 4}


def show(ref: str, path: str):
    try:
        return git("show", f"{ref}:{path}")
    except subprocess.CalledProcessError:
        return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/scaling.md"))
    parser.add_argument("--exp", nargs="*", help="experiment names (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    heads = {c: t.get("head") for c, t in yaml.safe_load(Path("params.yaml").read_text())["train"].items()}
    rows, paper = [], {}
    for name, ref in experiments().items():
        if args.exp and name not in args.exp:
            continue
        params = yaml.safe_load(show(ref, "params.yaml") or "{}")
        for case in params.get("cases", {}):
            files = {k: json.loads(text) for k in FILES if (text := show(ref, f"metrics/{case}/{k}.json"))}
            if "export" not in files:
                log.warning("%s: no metrics/%s/export.json (an unfinished experiment?)", name, case)
                continue
            row = scaling_row(name, case, params, files)
            rows.append(row)
            hyper = (files.get("scale") or {}).get("hyperparameters") or {}
            is_paper = params["train"][case].get("head") == heads.get(case) and (row["profile"] is None or (
                row["family"] == "dscnn" and hyper and all(h == {"width": 1.0} for h in hyper.values())))
            if is_paper and case not in paper:
                paper[case] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(scaling_md(rows, paper))
    log.info("%d experiment rows -> %s", len(rows), args.out)


if __name__ == "__main__":
    main()
