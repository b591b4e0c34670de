"""End to end: `dvc repro` of both cases on the reduced configuration in a temporary git repository."""
import collections
import json
import re
import shutil
import subprocess

import mlflow
import pytest
import torch
import yaml

from conftest import ROOT, make_dvc_repo, run, venv_env

pytestmark = pytest.mark.slow

def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, repo_root, small_params):
    """A fresh git+DVC repository holding the project and the reduced params, reproduced once."""
    path = tmp_path_factory.mktemp("repo")
    env = venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{path / 'mlflow.db'}", PYTHONPATH=str(path))
    make_dvc_repo(path, small_params, env)
    first = run(["dvc", "repro"], path, env)
    return path, env, first


STAGES = ["fetch", "slice", "featurize", "scale", "evaluate", "sensitivity", "latency", "ilp", "quantize", "export",
          "benchmark", "budget"]
CASES = ("covid", "battlefield")


def test_first_repro_runs_every_stage_for_both_cases(repo, small_params):
    path, env, first = repo
    partitions = small_params["partitions"]
    assert ran_stages(first) == ({f"{s}@{c}" for s in STAGES for c in CASES} | {"report"}
                                 | {f"train@{c}-{p}" for c in CASES for p in partitions})
    for case, models in {"covid": {"fused", "cough", "speech"}, "battlefield": {"fused", "image", "audio"}}.items():
        result = json.loads((path / "metrics" / case / "evaluate.json").read_text())
        assert set(result["models"]) == models and result["protocol"]["partitions"] == len(partitions)
        for m in result["models"].values():
            uar = m["uar"]
            assert len(uar["values"]) == len(partitions) and uar["std"] is not None
            assert uar["ci"][0] <= uar["mean"] <= uar["ci"][1]
            assert m["uar"]["mean"] == pytest.approx(sum(uar["values"]) / len(partitions), abs=1e-4)
            assert isinstance(m["collapsed"], bool)
        assert ("roc_auc" in result["models"]["fused"]) == (case == "covid")
        assert ("uar" in result["models"]["fused"]["subject"])
        assert set(result["gain"]) == models - {"fused"}
        assert result["protocol"]["leaky"] is False and len(result["features"]) == 32
        for p in partitions:
            train = json.loads((path / "metrics" / case / "train" / f"p{p}.json").read_text())
            assert train["features"] == result["features"] and train["seed"] == p   # seed.train + p
            assert train["models"]["fused"]["params"] > max(train["models"][m]["params"] for m in models - {"fused"})
        assert (path / "reports" / case / "confusion.png").stat().st_size > 1000
    train = json.loads((path / "metrics" / "covid" / "train" / "p0.json").read_text())
    assert train["models"]["fused"]["flatten"] == {"cough": 672, "speech": 1296}
    # the partitions draw different test subjects
    import csv
    with open(path / "data" / "interim" / "covid" / "samples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    tests = [{r["subject_id"] for r in rows if r[f"split_{p}"] == "test"} for p in partitions]
    assert tests[0] != tests[1]


def test_metrics_and_plots_show(repo):
    """`dvc metrics show` lists every headline figure (a row per model, variant and artifact), fits a terminal,
    and holds no per-layer bit width."""
    path, env, _ = repo
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], path, env))
    files = {f for rev in shown.values() for f in rev["data"]}
    for case in CASES:
        assert {f"metrics/{case}/headline/models/fused.json", f"metrics/{case}/headline/models/fused-per-subject.json",
                f"metrics/{case}/headline/variants/w4a4-ptq.json", f"metrics/{case}/headline/variants/mp-qat.json",
                f"metrics/{case}/headline/variants/ablation-reverse.json",
                f"metrics/{case}/headline/deployed/mp.json"} <= files
    keys = {k for rev in shown.values() for f in rev["data"].values() for k in f["data"]}
    assert keys <= {"uar", "uar_std", "uar_lo", "uar_hi", "acc", "acc_std", "acc_lo", "acc_hi", "auc", "auc_std", "kib", "ms"}
    table = run(["dvc", "metrics", "show"], path, env)
    assert max(len(line) for line in table.splitlines()) <= 200, table[:2000]
    compare = subprocess.run(["make", "-s", "compare"], cwd=path, env=env,
                             capture_output=True, text=True)
    assert "### covid: the best variant for a budget" in compare.stdout
    assert max(len(line) for line in compare.stdout.splitlines()) <= 200
    plots = run(["dvc", "plots", "show", "--json"], path, env)
    assert "metrics/battlefield/curves/p0" in plots and "reports/covid/confusion.csv" in plots


def test_dvc_plots_draw_in_chromium_without_network(repo, tmp_path):
    """Every plot of `dvc plots show` draws offline; DVC's default page (Vega from a CDN) draws none there."""
    from dvc_render.html import PAGE_HTML

    from tinym2net.browser import render_plots
    path, env, _ = repo
    shown = json.loads(run(["dvc", "plots", "show", "--json"], path, env))["data"]
    kinds = collections.Counter(item["type"] for items in shown.values() for item in items)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "offline")], path, env)
    page = render_plots(tmp_path / "offline" / "index.html", save_png=ROOT / "test-artifacts" / "dvc-plots.png")
    assert page.errors == []
    assert len(page.targets) == kinds["vega"] and sorted(page.plots) == sorted(page.targets)
    assert page.images == kinds["image"] == 6  # the confusion, budget and latency PNGs of both cases
    for case in ("covid", "battlefield"):
        models = json.loads((path / "metrics" / case / "train" / "p0.json").read_text())["models"]
        expected = {f"{case}_pareto", f"{case}_bits", f"reports_{case}_confusion_csv"}
        assert expected | {f"metrics_{case}_curves_p0_{m}_csv" for m in models} <= set(page.plots)
    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "cdn"), "--html-template", str(tmp_path / "cdn.html")], path, env)
    cdn = render_plots(tmp_path / "cdn" / "index.html", timeout_s=5)
    assert cdn.plots == {} and cdn.errors.count("vegaEmbed is not defined") == kinds["vega"]


def test_screenshot_tool_shoots_the_dvc_plots_and_an_mlflow_run_page(repo, tmp_path):
    from PIL import Image
    path, env, _ = repo
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    parent = next(r for r in mlflow.search_runs(experiment_names=["tinym2net-covid"], output_format="list")
                  if r.data.tags.get("stage") == "quantize" and "mlflow.parentRunId" not in r.data.tags)
    tool = ["python", str(ROOT / "scripts" / "screenshots.py"), "--repo", str(path), "--out-dir", str(tmp_path)]
    run([*tool, "dvc"], path, env)
    run([*tool, "mlflow", f"quantize={parent.info.run_name}", "--store", env["MLFLOW_TRACKING_URI"]], path, env, timeout=300)
    for name in ("dvc-plots", "quantize"):
        with Image.open(tmp_path / f"{name}.png") as png:
            assert png.format == "PNG" and png.width == 1400 and png.height >= 900
    shutil.copy(tmp_path / "quantize.png", ROOT / "test-artifacts" / "mlflow-quantize-run.png")


def test_runs_are_tracked_in_mlflow_with_lineage(repo):
    path, env, _ = repo
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["tinym2net-covid"], output_format="list")
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names)), sorted(names)  # one execution of each stage: no name twice
    assert {"covid-0/train", "covid-1/train", "covid/evaluate", "covid-1/train/fused", "covid-1/train/cough",
            "covid-1/train/speech"} <= set(names)
    train = next(r for r in runs if r.info.run_name == "covid-1/train")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()
    assert train.data.tags["git_commit"].startswith(commit) and train.data.tags["partition"] == "1"
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]["train@covid-1"]
    dep = next(d for d in lock["deps"] if d["path"] == "data/features/covid")
    assert train.data.tags["dvc.dep.data/features/covid"] == dep["md5"]
    fused = next(r for r in runs if r.info.run_name == "covid-1/train/fused")
    assert fused.data.tags["mlflow.parentRunId"] == train.info.run_id
    assert "val_uar" in fused.data.metrics
    evaluate = next(r for r in runs if r.info.run_name == "covid/evaluate")
    assert "fused_uar" in evaluate.data.metrics


def test_quantized_variants_and_report(repo):
    path, env, _ = repo
    for case in CASES:
        sens = json.loads((path / "models" / case / "sensitivity.json").read_text())
        assert sens["ties"] and all(set(l["omega"]) == {"4", "8", "32"} and l["omega"]["32"] == 0 for l in sens["layers"])
        assert isinstance(sens["converged"], bool) and all(l["trace_stderr"] >= 0 for l in sens["layers"])
        bits = json.loads((path / "models" / case / "bits.json").read_text())
        assert bits["size_bytes"] <= bits["size_limit"] and set(bits["bits"].values()) <= {4, 8, 32}
        assert "solve_time_s" not in bits
        latency = bits["budgets"]["latency"]  # the latency stage's table, budgeted
        assert latency["total"] <= latency["limit"] and latency["unit"] == "us"
        result = json.loads((path / "metrics" / case / "quantize.json").read_text())
        v = result["variants"]
        assert {"fp32", "w8a8", "mp", "w4a4"} <= set(v)
        assert v["fp32"]["weights_kib"] > v["w8a8"]["weights_kib"] > v["mp"]["weights_kib"] > v["w4a4"]["weights_kib"]
        for r in v.values():
            for stage in ("ptq", "qat"):
                acc = r[stage]["accuracy"]
                assert acc["ci"][0] <= acc["value"] <= acc["ci"][1]
        assert v["w4a4"]["ptq"]["accuracy"]["diff_ci"][0] <= v["w4a4"]["ptq"]["accuracy"]["diff"]
        assert set(result["ablation"]["allocations"]) == {"ilp", "reverse", "random-1", "random-2"}
        assert all((path / "models" / case / "quantized" / f"{name}.pt").is_file() for name in v)
        assert (path / "metrics" / case / "budget" / "pareto.csv").is_file()   # the budget stage's front
        assert "bits" not in json.dumps(result)  # per-layer widths are not metrics
    report = (path / "reports" / "results.md").read_text()
    assert "## covid" in report and "## battlefield" in report and "| W8A8 |" in report and "89.6" in report
    assert "±" in report and "Ablation at the MP variant's size budget" in report and "Post-training, uniform W4A4" in report
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["tinym2net-battlefield"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == "battlefield/quantize")
    # the budget view on the quantize parent run: the table, the plots, each deployed variant's figures
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "budget")}
    assert artifacts == {"budget/budget.md", "budget/budget.png", "budget/latency.png"}
    assert {"mp.accuracy", "mp.file_kib", "fp32.p50_ms"} <= set(parent.data.metrics)
    assert "the best variant for a budget" in parent.data.tags["mlflow.note.content"]
    for case in CASES:
        assert (path / "reports" / case / "budget.png").stat().st_size > 5000
        assert "| mp |" in (path / "reports" / case / "budget.md").read_text()
    children = {r.info.run_name.rsplit("/", 1)[1]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"fp32", "w8a8", "mp", "w4a4"} <= set(children)
    assert children["mp"].data.params["bits.head.out"] in ("8", "32") and "weights_kib" in children["mp"].data.metrics
    assert not any(k.startswith("bits.") for k in children["fp32"].data.params)


def test_second_repro_reruns_nothing_and_a_param_reruns_only_its_stage_onwards(repo):
    path, env, _ = repo
    again = run(["dvc", "repro"], path, env)
    assert ran_stages(again) == set(), again
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["ilp"]["size_lambda"] = 0.6
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], path, env)
    # nothing upstream of ilp reruns; downstream stages rerun where their inputs changed (DVC skips
    # e.g. benchmark when export wrote byte-identical artifacts)
    after_ilp = {f"{s}@{c}" for s in ("ilp", "quantize", "export", "benchmark", "budget") for c in CASES}
    ran = ran_stages(changed)
    assert {"ilp@covid", "ilp@battlefield", "quantize@covid", "quantize@battlefield"} <= ran <= after_ilp | {"report"}
    params["train"]["covid"]["lr"] = 0.002
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], path, env)
    after_train = {f"{s}@covid" for s in ("evaluate", "sensitivity", "latency", "ilp", "quantize", "export", "benchmark", "budget")}
    after_train |= {"train@covid-0", "train@covid-1"}
    ran = ran_stages(changed)
    assert {"train@covid-0", "train@covid-1", "evaluate@covid"} <= ran <= after_train | {"report"}


@pytest.mark.parametrize("case", ["covid", "battlefield"])
def test_all_8_bit_demo_model_is_within_one_point_of_fp32(repo, case):
    """Post-training W8A8 (no fine-tuning) of the demo pipeline's fused model, over every sample."""
    import numpy as np

    from tinym2net.quant import quantize_model
    from tinym2net.training import Features, load_model, predict

    path, _, _ = repo
    fp32 = load_model(path / "models" / case / "trained" / "p0" / "fused.pt")
    data = Features(path / "data" / "features" / case / "features.npz", fp32.modalities, 0)
    rows = np.arange(len(data.y))
    train = data.rows("train")
    calib = [(data.batch(train[i:i + 64], fp32.modalities), data.y[train[i:i + 64]]) for i in range(0, len(train), 64)]
    layers = [n for n, m in fp32.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    w8a8 = quantize_model(fp32, {n: 8 for n in layers}, calib)
    y = data.y.numpy()
    acc_fp32 = (predict(fp32, data, rows).argmax(1) == y).mean()
    acc_w8a8 = (predict(w8a8, data, rows).argmax(1) == y).mean()
    assert abs(acc_w8a8 - acc_fp32) <= 0.01, (acc_fp32, acc_w8a8, len(rows))
