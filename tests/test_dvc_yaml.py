"""dvc.yaml is derived from the code, not transcribed: each stage depends on every project module its
`pipelines/<stage>.py` imports, and declares exactly the outputs the stage module writes."""
import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from stage_imports import closure  # noqa: E402

STAGE_CASE = "covid"


def dvc_stages(root: Path) -> dict[str, dict]:
    """dvc.yaml's stage definitions (foreach/matrix bodies), by stage name."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def covered(module: str, deps: list[str]) -> bool:
    """A dependency names the module's file or a folder that holds it."""
    return any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps)


def missing_deps(root: Path, stage: str, spec: dict) -> list[str]:
    deps = [d for d in spec.get("deps", []) if "${" not in d]
    return sorted(m for m in closure(root, stage) if not covered(m, deps))


@pytest.mark.parametrize("stage", list(dvc_stages(Path(__file__).resolve().parents[1])))
def test_every_imported_project_module_is_a_dependency(repo_root, stage):
    spec = dvc_stages(repo_root)[stage]
    assert spec["cmd"].startswith(f"python -m pipelines.{stage}")
    assert missing_deps(repo_root, stage, spec) == []


def test_the_check_catches_a_module_missing_from_a_stage(repo_root, tmp_path):
    """Drop one imported module from a copy of dvc.yaml (and import a new one in a copy of a stage): caught."""
    spec = dvc_stages(repo_root)["quantize"]
    spec = {**spec, "deps": [d for d in spec["deps"] if d != "src/tinym2net/metrics.py"]}
    assert missing_deps(repo_root, "quantize", spec) == ["src/tinym2net/metrics.py"]
    for name in ("pipelines", "src"):
        shutil.copytree(repo_root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    stage = tmp_path / "pipelines" / "ilp.py"
    stage.write_text("from tinym2net import hessian\n" + stage.read_text())
    assert missing_deps(tmp_path, "ilp", dvc_stages(repo_root)["ilp"]) == ["src/tinym2net/hessian.py", "src/tinym2net/quant.py"]


def _outs(spec: dict) -> set[str]:
    names = set()
    for key in ("outs", "metrics", "plots"):
        for entry in spec.get(key, []):
            names.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return names


@pytest.mark.parametrize("stage", [s for s in dvc_stages(Path(__file__).resolve().parents[1])])
def test_each_stage_owns_exactly_the_outputs_dvc_yaml_declares(repo_root, stage):
    """The stage's `OUTPUTS` (what its `Outputs` lets it write) are its outs, metrics and plots in dvc.yaml."""
    module = importlib.import_module(f"pipelines.{stage}")
    spec = dvc_stages(repo_root)[stage]
    fill = {"${key}": "{case}", "${item.case}": "{case}", "${item.partition}": "{partition}"}
    declared = set()
    for name in _outs(spec):
        for a, b in fill.items():
            name = name.replace(a, b)
        declared.add(name)
    pictures = {n for n in declared if n.endswith(".png")}  # DVC plots of images are outputs too
    assert set(module.OUTPUTS) == declared | pictures
