"""reports/results.md: our figures beside the TinyM2Net paper's (Tables 2-4)."""
from __future__ import annotations

# Paper, Table 4 (accuracy %, size KB) and the unimodal baselines (accuracy %).
PAPER = {
    "covid": {"fp32": (90.4, 845), "w8a8": (89.6, 216), "mp": (88.4, 145), "w4a4": (83.6, 107),
              "unimodal": {"cough": 73.9, "speech": 72.1}},
    "battlefield": {"fp32": (98.5, 1605), "w8a8": (97.9, 407), "mp": (96.8, 269), "w4a4": (91.3, 205),
                    "unimodal": {"image": 93.6}},
}
LABELS = {"fp32": "FP32", "w8a8": "W8A8", "mp": "Mixed (ILP)", "w4a4": "W4A4"}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def case_section(case: str, evaluate: dict, quantize: dict) -> str:
    """The markdown section of one case."""
    paper = PAPER.get(case, {})
    split = evaluate["split"]
    leak = " **(leaky: the paper's random split)**" if split["leaky"] else ""
    lines = [f"## {case}", "",
             f"Test split: {split['strategy']}{leak}, {split['test_samples']} samples from "
             f"{split['test_subjects']} {'participants' if case == 'covid' else 'videos'}.", "",
             "| variant | accuracy % | paper accuracy % | UAR % | macro-F1 % | size KiB | paper size KB | compression | BOPS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, label in LABELS.items():
        r = quantize["variants"].get(name)
        if r is None:
            continue
        p_acc, p_size = paper.get(name, (None, None))
        lines.append(f"| {label} | {_pct(r['accuracy'])} | {p_acc if p_acc is not None else '-'} | {_pct(r['uar'])} "
                     f"| {_pct(r['macro_f1'])} | {r['size_kib']:.1f} | {p_size if p_size is not None else '-'} "
                     f"| {r['compression']:.1f}x | {r['bops']:.3g} |")
    lines += ["", "Multimodal against unimodal (FP32, test split):", "",
              "| model | accuracy % | paper accuracy % | UAR % | parameters |", "|---|---|---|---|---|"]
    for name, m in evaluate["models"].items():
        p = paper.get("fp32", (None,))[0] if name == "fused" else paper.get("unimodal", {}).get(name)
        lines.append(f"| {name} | {_pct(m['accuracy'])} | {p if p is not None else '-'} | {_pct(m['uar'])} "
                     f"| {m['params']:,} |")
    gains = ", ".join(f"{100 * g:+.1f} points over {m}" for m, g in evaluate["fused_gain"].items())
    lines += ["", f"Fused gain: {gains}.", "",
              "Pareto front (size KiB, accuracy %): " + ", ".join(
                  f"{p['variant']} ({p['size_kib']:.1f}, {_pct(p['accuracy'])})" for p in quantize["pareto"]) + ".", ""]
    return "\n".join(lines)


def results_md(cases: dict[str, tuple[dict, dict]]) -> str:
    """The whole report: one section per case."""
    head = ["# Results", "",
            "Produced by `dvc repro` (stage `report`) from `metrics/<case>/evaluate.json` and "
            "`metrics/<case>/quantize.json`. Paper figures: TinyM2Net, Tables 2-4 (the paper reports KB; "
            "we report KiB of packed weights plus scales). On the built-in demo source these numbers describe "
            "the synthetic data, not COVID-19 or battlefield recordings.", ""]
    return "\n".join(head + [case_section(c, e, q) for c, (e, q) in cases.items()])
