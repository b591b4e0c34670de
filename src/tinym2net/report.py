"""reports/results.md: every headline figure with its spread, our figures beside the TinyM2Net paper's
(Tables 2-4), collapsed models and leaky splits said loudly, and figures from different data refused."""
from __future__ import annotations

from . import budget
from .errors import DataError

# Paper, Table 4 (accuracy %, size KB) and the unimodal baselines (accuracy %).
PAPER = {
    "covid": {"fp32": (90.4, 845), "w8a8": (89.6, 216), "mp": (88.4, 145), "w4a4": (83.6, 107),
              "unimodal": {"cough": 73.9, "speech": 72.1}},
    "battlefield": {"fp32": (98.5, 1605), "w8a8": (97.9, 407), "mp": (96.8, 269), "w4a4": (91.3, 205),
                    "unimodal": {"image": 93.6}},
}
LABELS = {"fp32": "FP32", "w8a8": "W8A8", "mp": "Mixed (ILP)", "w4a4": "W4A4"}


class StaleMetrics(DataError):
    """Metrics files of one case were computed on different features."""


def check_same_data(case: str, files: dict[str, dict]) -> str:
    """The features hash every metrics file of a case records; a StaleMetrics naming the odd file out."""
    hashes = {name: data.get("features") for name, data in files.items() if data is not None}
    missing = [name for name, h in hashes.items() if not h]
    if missing:
        raise StaleMetrics(f"{missing[0]}: records no features hash (written by an older version); rerun its stage")
    reference = hashes.get(f"metrics/{case}/evaluate.json") or next(iter(hashes.values()))
    stale = [name for name, h in hashes.items() if h != reference]
    if stale:
        raise StaleMetrics(f"{stale[0]} was computed on other data than metrics/{case}/evaluate.json (features "
                           f"{hashes[stale[0]][:8]} vs {reference[:8]}); it is stale: `dvc repro` the case")
    return reference


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def spread(f: dict | None) -> str:
    """'mean ± std [lo, hi]' in percent, from an `interval` dict."""
    if not f or f.get("mean") is None:
        return "-"
    if f.get("std") is None:
        return _pct(f["mean"])
    return f"{_pct(f['mean'])} ± {_pct(f['std'])} [{_pct(f['ci'][0])}, {_pct(f['ci'][1])}]"


def boot(f: dict | None, key: str = "value") -> str:
    """'value [lo, hi]' in percent from a bootstrap dict (or its difference)."""
    if not f:
        return "-"
    value, ci = (f["value"], f["ci"]) if key == "value" else (f.get("diff"), f.get("diff_ci"))
    if value is None:
        return "-"
    sign = "+" if key != "value" and value >= 0 else ""
    return f"{sign}{_pct(value)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def case_section(case: str, files: dict[str, dict]) -> str:
    """The markdown section of one case."""
    evaluate, quantize = files[f"metrics/{case}/evaluate.json"], files[f"metrics/{case}/quantize.json"]
    export = files.get(f"metrics/{case}/export.json") or {}
    bench = files.get(f"metrics/{case}/benchmark.json")
    paper = PAPER.get(case, {})
    proto = evaluate["protocol"]
    leak = " **LEAKY (" + ("the given split" if proto["strategy"] == "given" else "the paper's random split") + \
        "): these figures overstate what the model does on new subjects**" if proto["leaky"] else ""
    lines = [f"## {case}", "",
             f"Protocol: {proto['partitions']} {proto['strategy']} partitions (unit: {proto['unit']}){leak}; test splits "
             f"of {', '.join(map(str, proto['test_samples']))} samples from {', '.join(map(str, proto['test_units']))} "
             f"{proto['unit']}s. Figures: mean ± std over the partitions [{100 * proto['confidence']:g}% interval, "
             f"{proto['interval']}].", ""]
    for warning in evaluate.get("warnings", []):
        lines += [f"> **Warning:** {warning}", ""]
    has_auc = any("roc_auc" in m for m in evaluate["models"].values())
    head = "| model | UAR % | accuracy % | macro-F1 % |" + (" ROC AUC % | per subject: UAR % | per subject: AUC % |"
                                                          if has_auc else "") + " parameters | paper accuracy % |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, m in evaluate["models"].items():
        p = paper.get("fp32", (None,))[0] if name == "fused" else paper.get("unimodal", {}).get(name)
        label = f"{name} **(collapsed)**" if m.get("collapsed") else name
        row = f"| {label} | {spread(m['uar'])} | {spread(m['accuracy'])} | {spread(m['macro_f1'])} |"
        if has_auc:
            row += f" {spread(m.get('roc_auc'))} | {spread(m['subject'].get('uar'))} | {spread(m['subject'].get('roc_auc'))} |"
        lines.append(row + f" {m['params']:,} | {p if p is not None else '-'} |")
    costs = {name: m["fp32_cost"] for name, m in evaluate["models"].items() if m.get("fp32_cost")}
    if costs:
        lines += ["", "FP32 cost on a device (cost model: `.tm2` Flash, peak activation RAM, MACs): " + "; ".join(
            f"{name} {_kib(c['flash_bytes'])} KiB, {_kib(c['peak_ram_bytes'])} KiB, {c['macs'] / 1e6:.2f} M"
            for name, c in costs.items()) + "."]
    if evaluate.get("gain"):
        lines += ["", "Gain of the fused model (points, per partition, then summarized): " + "; ".join(
            f"over {m}: UAR {spread(g['uar'])}, accuracy {spread(g['accuracy'])}" for m, g in evaluate["gain"].items()) + "."]
    groups = evaluate["models"][next(iter(evaluate["models"]))].get("groups") or {}
    if groups:
        lines += ["", f"Per group ({next(iter(evaluate['models']))}): " + "; ".join(
            f"{g}: UAR {spread(f['uar'])}, accuracy {spread(f['accuracy'])}" for g, f in groups.items()) + "."]
    lines += ["", quantize_section(case, quantize, export, paper), ""]
    if export:
        lines += [budget.markdown(case, budget.rows(quantize, export, bench), quantize["spread"]), ""]
    return "\n".join(lines)


def quantize_section(case: str, q: dict, export: dict, paper: dict) -> str:
    """Variants PTQ and QAT with their paired difference to FP32, the deployed accuracy, the ablation."""
    deployed = {name: v.get("deployed", {}).get("accuracy") for name, v in export.get("variants", {}).items()}
    lines = [f"Quantized variants of partition {q['partition']}'s fused model ({q['test_samples']} test samples, "
             f"{q['test_units']} units; {q['spread']}). Deployed: the exported artifact's accuracy (export.json).", "",
             "| variant | PTQ accuracy % | PTQ vs FP32 (points) | QAT accuracy % | QAT vs FP32 (points) | deployed accuracy % "
             "| QAT UAR % | weights KiB | compression | BOPS G | paper accuracy % | paper size KB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in q["variants"].items():
        p_acc, p_size = paper.get(name, (None, None))
        dep = deployed.get(name)
        lines.append(f"| {LABELS.get(name, name)} | {boot(r['ptq']['accuracy'])} | {boot(r['ptq']['accuracy'], 'diff')} "
                     f"| {boot(r['qat']['accuracy'])} | {boot(r['qat']['accuracy'], 'diff')} | {boot(dep)} "
                     f"| {boot(r['qat']['uar'])} | {r['weights_kib']:.1f} | {r['compression']:.1f}x | {r['bops_g']:.3g} "
                     f"| {p_acc if p_acc is not None else '-'} | {p_size if p_size is not None else '-'} |")
    lines += ["", verdict(q)]
    ab = q.get("ablation", {}).get("allocations", {})
    if len(ab) > 1:
        lines += ["", f"Ablation at the MP variant's size budget ({q['ablation']['size_limit_bytes'] / 1024:.1f} KiB), "
                      "post-training: does the Hessian ordering help?", "",
                  "| allocation | sum of Omega | weights KiB | PTQ accuracy % | vs FP32 (points) | PTQ UAR % |",
                  "|---|---|---|---|---|---|"]
        for name, a in ab.items():
            lines.append(f"| {name} | {a['objective']:.3g} | {a['weights_kib']:.1f} | {boot(a['accuracy'])} "
                         f"| {boot(a['accuracy'], 'diff')} | {boot(a['uar'])} |")
    sens = q.get("sensitivity", {})
    if sens:
        lines += ["", f"Sensitivity: Hutchinson {'converged' if sens['converged'] else '**did NOT converge**'} "
                      f"in {sens['iterations']} iterations."]
    return "\n".join(lines)


def verdict(q: dict) -> str:
    """What the PTQ figures say about uniform 4-bit and the ILP's mixed precision, plainly."""
    v = q["variants"]
    low = next((n for n in v if n.startswith("w") and n != "w8a8" and n.endswith(n[1])), None)
    if low is None or "mp" not in v:
        return ""
    d4, dmp = v[low]["ptq"]["accuracy"], v["mp"]["ptq"]["accuracy"]
    lost = d4["diff_ci"][1] < 0
    text = (f"Post-training, uniform {low.upper()} changes accuracy by {boot(d4, 'diff')} points against FP32: "
            + ("a loss beyond the spread." if lost else "within the spread (no measurable loss)."))
    if lost:
        recovered = dmp["diff_ci"][1] >= 0
        text += (f" The ILP's mixed precision changes it by {boot(dmp, 'diff')}: "
                 + ("it recovers the loss (its interval includes no change)." if recovered
                    else "it does not fully recover the loss."))
    return text


def results_md(cases: dict[str, dict[str, dict]]) -> str:
    """The whole report: one section per case (`cases`: case -> {metrics file: its content})."""
    head = ["# Results", "",
            "Produced by `dvc repro` (stage `report`) from `metrics/<case>/*.json`. Paper figures: TinyM2Net, Tables 2-4 "
            "(the paper reports KB and accuracy of a random, leaky split; we report KiB of packed weights plus scales, "
            "subject-disjoint partitions, and UAR beside accuracy). On the built-in demo source these numbers describe "
            "the synthetic data, not COVID-19 or battlefield recordings.", ""]
    return "\n".join(head + [case_section(c, files) for c, files in cases.items()])


# ----------------------------------------------------------------------------- scaling experiments

def _kib(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def _hyper(scale: dict) -> str:
    """`cough width 1, speech width 0.75` from a scale.json."""
    hyper = scale.get("hyperparameters")
    if not hyper:
        return "train's branches" if scale.get("profile") is None else "-"
    return "; ".join(f"{m} " + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in h.items())
                     for m, h in hyper.items())


def scaling_row(name: str, case: str, params: dict, files: dict[str, dict]) -> dict:
    """One experiment's figures for one case: the MILP's choice, the FP32 model over the partitions, and each
    exported artifact (deployed accuracy, Flash, peak RAM, MACs, batch-1 latency, whether it fits the profile)."""
    scale, evaluate, export, bench = (files.get(k) or {} for k in ("scale", "evaluate", "export", "benchmark"))
    models = evaluate.get("models") or {}
    first = next(iter(models.values()), {})
    artifacts = {}
    for variant, v in (export.get("variants") or {}).items():
        lat = ((bench.get("variants") or {}).get(variant) or {}).get("latency_ms") or {}
        artifacts[variant] = {"accuracy": (v.get("deployed") or {}).get("accuracy"), "flash_bytes": v.get("flash_bytes"),
                              "peak_ram_bytes": v.get("peak_ram_bytes"), "peak_ram_int8_bytes": v.get("peak_ram_int8_bytes"),
                              "macs": v.get("macs"), "p50_ms": lat.get("p50"), "fits": v.get("fits_profile")}
    return {"experiment": name, "case": case, "profile": (params.get("scale") or {}).get("profile"),
            "family": (params.get("scale") or {}).get("family"), "partitions": len(params.get("partitions") or []),
            "choice": _hyper(scale), "scale": scale, "fp32": first.get("accuracy"), "artifacts": artifacts}


def scaling_md(rows: list[dict], paper: dict[str, dict]) -> str:
    """reports/scaling.md: per profile and case, each experiment's chosen network and its deployed figures; then
    the smallest artifacts (the < 32 KiB question) against the paper DS-CNN's FP32 artifact (`paper`: case -> row)."""
    out = ["# Hardware-aware scaling: device profiles, the scale MILP and the deployed artifacts", "",
           "From `python scripts/scaling_report.py` over the DVC experiments (`dvc exp run -S scale.profile=...`). "
           "Accuracy of the FP32 model: mean ± std [95% interval] over the partitions; of the artifacts: the deployed "
           "(LiteRT) accuracy on partition 0's test split with its subject/time-block bootstrap interval. Flash = the "
           "`.tm2` file; peak RAM = the cost model's (packed activations; int8 storage in brackets); latency = batch-1 "
           "p50 on this machine (LiteRT, XNNPACK, one thread). `mp` is the ILP's allocation under the profile; "
           "`best fit` the most accurate exported variant within all the profile's limits.", ""]
    for profile in sorted({r["profile"] or "-" for r in rows}):
        out += [f"## Profile {profile}", ""]
        limits = next((r["scale"].get("limits") for r in rows if (r["profile"] or "-") == profile and r["scale"].get("limits")), None)
        if limits:
            out += [f"Limits: Flash {_kib(limits['flash_bytes'])} KiB, RAM {_kib(limits['ram_bytes'])} KiB, "
                    f"MACs {limits['macs'] / 1e6 if limits.get('macs') else '-'} M" + (f", BOPS {limits['bops']:.3g}" if limits.get("bops") else "")
                    + f" ({limits.get('description', '')}).", ""]
        out += ["| case | experiment (family, partitions) | chosen by scale | FP32 accuracy | mp accuracy | mp Flash KiB | "
                "mp peak RAM KiB | MACs M | mp p50 ms | best fit: variant, accuracy, Flash KiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in [r for r in rows if (r["profile"] or "-") == profile]:
            mp = r["artifacts"].get("mp") or {}
            fitting = [(v, a) for v, a in r["artifacts"].items() if a.get("fits") and a.get("accuracy")]
            best = max(fitting, key=lambda va: va[1]["accuracy"]["value"], default=None)
            best_txt = f"{best[0]}, {boot(best[1]['accuracy'])}, {_kib(best[1]['flash_bytes'])}" if best else "none fits"
            macs = "-" if mp.get("macs") is None else f"{mp['macs'] / 1e6:.2f}"
            p50 = "-" if mp.get("p50_ms") is None else f"{mp['p50_ms']:.3f}"
            out.append(f"| {r['case']} | {r['experiment']} ({r['family']}, {r['partitions']}) | {r['choice']} | "
                       f"{spread(r['fp32'])} | {boot(mp.get('accuracy'))} | {_kib(mp.get('flash_bytes'))} | "
                       f"{_kib(mp.get('peak_ram_bytes'))} ({_kib(mp.get('peak_ram_int8_bytes'))}) | {macs} | {p50} | "
                       f"{best_txt} |")
        out.append("")
    out += ["## Under 32 KiB of Flash", ""]
    for case in sorted({r["case"] for r in rows}):
        small = [(r, v, a) for r in rows if r["case"] == case for v, a in r["artifacts"].items()
                 if a.get("flash_bytes") is not None and a.get("accuracy")]
        under = [t for t in small if t[2]["flash_bytes"] <= 32 * 1024]
        ref = (paper.get(case) or {}).get("artifacts", {}).get("fp32", {}).get("accuracy")
        ref_txt = f"the paper DS-CNN's FP32 artifact: {boot(ref)} ({paper[case]['experiment']})" if ref else \
            "no run of the paper DS-CNN to compare with"
        if under:
            r, v, a = max(under, key=lambda t: t[2]["accuracy"]["value"])
            gap = f"; {100 * (ref['value'] - a['accuracy']['value']):.1f} points below it (partition 0's test split)" if ref else ""
            out.append(f"- {case}: best artifact under 32 KiB: {r['experiment']} `{v}` ({r['choice']}), "
                       f"{_kib(a['flash_bytes'])} KiB, accuracy {boot(a['accuracy'])}; {ref_txt}{gap}.")
        elif small:
            r, v, a = min(small, key=lambda t: t[2]["flash_bytes"])
            out.append(f"- {case}: no artifact under 32 KiB; the smallest: {r['experiment']} `{v}`, "
                       f"{_kib(a['flash_bytes'])} KiB, accuracy {boot(a['accuracy'])}; {ref_txt}.")
    return "\n".join(out) + "\n"
