"""DVC plots: the zero-filled confusion table, the offline page, and every plot of dvc.yaml drawn in Chromium."""
import collections
import csv
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import yaml

from conftest import ROOT, run, venv_env
from tinym2net.browser import render_plots
from tinym2net.plots import confusion_counts, confusion_csv, confusion_png

HTML = ROOT / ".dvc" / "plots" / "html"


def test_confusion_counts_cover_every_class_in_class_order_with_zeros():
    classes = ["helicopter", "bomb", "gun", "tank"]
    y_true = [0, 0, 2, 3, 3, 3, 0]
    y_pred = [0, 2, 2, 3, 0, 3, 0]  # "bomb" never occurs, neither as truth nor as prediction
    rows = confusion_counts(y_true, y_pred, classes)
    expected = collections.Counter((classes[a], classes[p]) for a, p in zip(y_true, y_pred))
    assert [(r["actual"], r["predicted"]) for r in rows] == [(a, p) for a in classes for p in classes]
    assert {(r["actual"], r["predicted"]): r["count"] for r in rows} == {
        (a, p): expected.get((a, p), 0) for a in classes for p in classes}


def test_every_case_has_its_pareto_and_bits_plot(repo_root):
    cases = yaml.safe_load((repo_root / "params.yaml").read_text())["cases"]
    plots = {next(iter(p)): next(iter(p.values())) for p in yaml.safe_load((repo_root / "dvc.yaml").read_text())["plots"]}
    for case in cases:
        assert set(plots[f"{case}/pareto"]["y"]) == {f"metrics/{case}/budget/points.csv",
                                                     f"metrics/{case}/budget/pareto.csv"}
        assert set(plots[f"{case}/bits"]["y"]) == {f"metrics/{case}/quantize/bits.csv"}
    assert set(plots) == {f"{case}/{kind}" for case in cases for kind in ("pareto", "bits")}


def test_the_page_template_holds_the_pinned_vega_builds_and_loads_nothing(repo_root):
    from dvc.repo import Repo
    assert Repo(str(repo_root)).config["plots"]["html_template"] == "plots/html/index.html"
    page = (HTML / "index.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC puts its CDN <script src> tags at {scripts}
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    assert "<script>" in page and not re.search(r"\b(src|href)=", markup)
    pins = json.loads((HTML / "package.json").read_text())["dependencies"]
    lock = json.loads((HTML / "package-lock.json").read_text())["packages"]
    inlined = re.findall(r"<!-- (\S+) (\S+) \(\S+\) \S+ sha256=(\w+) -->\n<script>(.*?)</script>", page, re.S)
    assert [name for name, *_ in inlined] == ["vega", "vega-lite", "vega-embed"]
    for name, version, digest, code in inlined:
        assert version == pins[name] == lock[f"node_modules/{name}"]["version"]
        assert hashlib.sha256(code.encode()).hexdigest() == digest
    licences = (HTML / "THIRD_PARTY_LICENSES.txt").read_text()
    for key, info in lock.items():
        if key:
            assert f"\n{key.rsplit('node_modules/', 1)[1]} {info['version']} (" in licences


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """The project's dvc.yaml, params and .dvc/ over small hand-made plot files: a class that never
    occurs, layers whose network order is not alphabetical, curves with val_uar."""
    path = tmp_path_factory.mktemp("plots")
    env = venv_env()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, path / name)
    run(["dvc", "init", "--no-scm", "-q"], path, env)
    shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", path / ".dvc" / "plots")
    cases = yaml.safe_load((ROOT / "params.yaml").read_text())["cases"]
    partitions = yaml.safe_load((ROOT / "params.yaml").read_text())["partitions"]
    data = {}
    for k, (case, info) in enumerate(cases.items()):
        classes = info["classes"]
        size = 100.0 * (k + 1)
        points = [{"variant": v, "file_kib": round(size * f, 2), "accuracy": a, "accuracy_lo": a - 0.01,
                   "accuracy_hi": a + 0.01} for v, f, a in
                  (("fp32", 4.0, 0.95), ("w8a8", 1.0, 0.96), ("mp", 0.7, 0.94), ("w4a4", 0.5, 0.90))]
        bits = [{"layer": n, "mp": b, "omega_low": 1e-4} for n, b in
                (("branch.conv1", 8), ("branch.sepconv2.dw", 4), ("branch.dense", 4), ("head.out", 8))]
        write_csv(path / "metrics" / case / "budget" / "points.csv", points)
        write_csv(path / "metrics" / case / "budget" / "pareto.csv", [points[1], points[2], points[3]])
        write_csv(path / "metrics" / case / "quantize" / "bits.csv", bits)
        for part in partitions:
            write_csv(path / "metrics" / case / "curves" / f"p{part}" / "fused.csv",
                      [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5,
                        "val_uar": 0.4 + e / 10} for e in (1, 2, 3)])
        y_true = np.arange(len(classes)).repeat(3)
        y_true = y_true[y_true != 1]  # class 1 never occurs and is never predicted
        y_pred = np.where(y_true == 0, len(classes) - 1, y_true)
        (path / "reports" / case).mkdir(parents=True)
        with open(path / "reports" / case / "confusion.csv", "w", newline="") as fh:
            confusion_csv(y_true, y_pred, classes, fh)
        confusion_png(y_true, y_pred, classes, path / "reports" / case / "confusion.png", case)
        data[case] = {"classes": classes, "points": points, "bits": bits}
    run(["dvc", "plots", "show", "-o", "out"], path, env)
    return render_plots(path / "out" / "index.html", save_png=ROOT / "test-artifacts" / "dvc-plots-fixture.png"), data


def test_every_plot_draws_offline_with_what_it_should_show(plots_repo):
    page, data = plots_repo
    assert page.errors == []
    partitions = yaml.safe_load((ROOT / "params.yaml").read_text())["partitions"]
    assert sorted(page.plots) == sorted(page.targets) and len(page.targets) == (3 + len(partitions)) * len(data)
    assert page.images == len(data)
    for case, d in data.items():
        pareto, bits = page.plots[f"{case}_pareto"], page.plots[f"{case}_bits"]
        variants = {m["variant"]: m for kind, m in pareto.marks if kind == "point" and "variant" in m}
        assert set(variants) == {p["variant"] for p in d["points"]}  # this case's variants only, named
        lowest = min(float(t.rstrip("%")) for t in pareto.axes["deployed test accuracy"] if t)
        assert 85 <= lowest <= 90  # zoomed to the data (0.90-0.96), not from 0
        rings = [(m["artifact file (KiB)"], m["deployed test accuracy"]) for kind, m in pareto.marks if kind == "point" and "variant" not in m]
        front = [variants[v] for v in ("w4a4", "mp", "w8a8")]  # fp32 is beaten by w8a8
        assert sorted(rings) == sorted((m["artifact file (KiB)"], m["deployed test accuracy"]) for m in front)
        assert [kind for kind, _ in pareto.marks].count("line mark") == 1
        assert bits.axes["layer"] == [b["layer"] for b in d["bits"]]  # network order, not alphabetical
        curves = page.plots[f"metrics_{case}_curves_p0_fused_csv"]
        assert {m["series"] for _, m in curves.marks if "series" in m} == {"train_loss", "val_loss", "val_uar"}
        assert {"cross-entropy loss", "val UAR"} <= set(curves.axes) and "fused" in curves.titles
        assert [t for t in curves.axes["epoch"] if t] == ["1", "2", "3"]  # whole epochs only
        confusion = page.plots[f"reports_{case}_confusion_csv"]
        assert confusion.axes["actual"] == confusion.axes["predicted"] == d["classes"]
        cells = {(m["actual"], m["predicted"]): int(m["count"]) for kind, m in confusion.marks if kind == "rect mark"}
        assert len(cells) == len(d["classes"]) ** 2 and cells[(d["classes"][1], d["classes"][1])] == 0
