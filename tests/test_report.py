"""The report refuses figures computed on different data, and says what the figures say."""
import json

import pytest

from pipelines.report import report
from tinym2net.report import StaleMetrics, check_same_data, spread, verdict


def _interval(mean, std=0.01):
    return {"mean": mean, "std": std, "ci": [mean - 0.02, mean + 0.02], "values": [mean] * 3}


def _boot(value, diff=None, lo=None, hi=None):
    out = {"value": value, "ci": [value - 0.02, value + 0.02]}
    if diff is not None:
        out.update(diff=diff, diff_ci=[lo, hi])
    return out


def metrics_of(case: str, features: str) -> dict:
    model = {k: _interval(0.9) for k in ("accuracy", "uar", "macro_f1")} | {
        "subject": {"uar": _interval(0.9)}, "groups": {}, "collapsed": False, "params": 1000}
    variant = {"lambda": None, "weights_kib": 10.0, "compression": 4.0, "bops_g": 0.5, "layers_at": {},
               "ptq": {"accuracy": _boot(0.9, 0.0, -0.01, 0.01), "uar": _boot(0.9)},
               "qat": {"accuracy": _boot(0.9, 0.0, -0.01, 0.01), "uar": _boot(0.9)}}
    return {
        f"metrics/{case}/evaluate.json": {"features": features, "protocol": {
            "strategy": "subject", "leaky": False, "unit": "subject", "partitions": 3, "confidence": 0.95,
            "interval": "t", "test_samples": [10] * 3, "test_units": [5] * 3},
            "models": {"fused": model}, "gain": {}, "warnings": []},
        f"metrics/{case}/quantize.json": {"features": features, "partition": 0, "test_samples": 10, "test_units": 5,
                                          "spread": "bootstrap", "variants": {"fp32": variant}, "pareto": []},
        f"metrics/{case}/export.json": None,
    }


def write(root, files: dict) -> None:
    for name, content in files.items():
        if content is not None:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))


def test_report_refuses_metrics_of_mixed_data_and_names_the_stale_file(tmp_path, small):
    for case in small.cases:
        write(tmp_path, metrics_of(case, "a" * 32))
    report(small, tmp_path)
    assert "## covid" in (tmp_path / "reports" / "results.md").read_text()
    stale = metrics_of("covid", "b" * 32)["metrics/covid/quantize.json"]
    write(tmp_path, {"metrics/covid/quantize.json": stale})
    before = (tmp_path / "reports" / "results.md").read_text()
    with pytest.raises(StaleMetrics, match="metrics/covid/quantize.json was computed on other data than "
                                           "metrics/covid/evaluate.json .*stale"):
        report(small, tmp_path)
    assert (tmp_path / "reports" / "results.md").read_text() == before   # the earlier report is kept


def test_a_file_without_a_features_hash_is_refused():
    files = metrics_of("covid", "a" * 32)
    del files["metrics/covid/quantize.json"]["features"]
    with pytest.raises(StaleMetrics, match="metrics/covid/quantize.json: records no features hash"):
        check_same_data("covid", files)


def test_spread_and_the_quantization_verdict_are_plain():
    assert spread(_interval(0.9123, 0.0212)) == "91.2 ± 2.1 [89.2, 93.2]"
    q = {"variants": {"fp32": {"ptq": {"accuracy": _boot(0.9)}},
                      "w4a4": {"ptq": {"accuracy": _boot(0.8, -0.1, -0.14, -0.06)}},
                      "mp": {"ptq": {"accuracy": _boot(0.9, -0.004, -0.02, 0.01)}}}}
    assert verdict(q) == ("Post-training, uniform W4A4 changes accuracy by -10.0 [-14.0, -6.0] points against FP32: "
                          "a loss beyond the spread. The ILP's mixed precision changes it by -0.4 [-2.0, 1.0]: it "
                          "recovers the loss (its interval includes no change).")
    q["variants"]["w4a4"]["ptq"]["accuracy"] = _boot(0.89, -0.01, -0.03, 0.01)
    assert verdict(q).endswith("within the spread (no measurable loss).")


def test_scaling_report_picks_the_best_fitting_artifact_and_the_32k_gap():
    from tinym2net.report import scaling_md, scaling_row

    def files(flash_mp, acc_mp, acc_w8, fits_w8):
        acc = lambda v: {"value": v, "ci": [v - 0.02, v + 0.01]}  # noqa: E731
        return {"scale": {"profile": "mcu-32k", "limits": {"flash_bytes": 32768, "ram_bytes": 32768, "macs": 2000000},
                          "hyperparameters": {"cough": {"width": 0.25}}},
                "evaluate": {"models": {"fused": {"accuracy": {"mean": 0.9, "std": 0.01, "ci": [0.88, 0.92]}}}},
                "export": {"variants": {"mp": {"deployed": {"accuracy": acc(acc_mp)}, "flash_bytes": flash_mp,
                                               "peak_ram_bytes": 30000, "macs": 900000, "fits_profile": True},
                                        "w8a8": {"deployed": {"accuracy": acc(acc_w8)}, "flash_bytes": 40000,
                                                 "fits_profile": fits_w8},
                                        "fp32": {"deployed": {"accuracy": acc(0.95)}, "flash_bytes": 500000}}},
                "benchmark": {"variants": {"mp": {"latency_ms": {"p50": 0.0123}}}}}

    params = {"scale": {"profile": "mcu-32k", "family": "dscnn"}, "partitions": [0]}
    small = scaling_row("32k", "covid", params, files(30000, 0.91, 0.93, False))
    paper = scaling_row("paper", "covid", {"scale": {"profile": None, "family": "dscnn"}, "partitions": [0, 1, 2]},
                        files(90000, 0.94, 0.95, True))
    text = scaling_md([small, paper], {"covid": paper})
    row = next(line for line in text.splitlines() if line.startswith("| covid | 32k"))
    assert "cough width 0.25" in row and "| 29.3 |" in row and "0.012" in row
    assert row.endswith("| mp, 91.0 [89.0, 92.0], 29.3 |")       # w8a8 is more accurate but over the profile
    assert "best artifact under 32 KiB: 32k `mp`" in text and "4.0 points below it" in text
