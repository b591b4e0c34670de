"""Which variant is best for a size or latency budget: one table per case joining the quantize, export and
benchmark figures (each deployed artifact's accuracy with its interval, its file size and its latency), the
Pareto fronts of accuracy against file size and against latency, and the two plots."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLOAT = 32


def bits_summary(layers_at: dict[str, int] | None) -> str:
    """'8x9 4x4 fp32x2' from the layer count per width; 'float' for a float model."""
    counts = {int(b): n for b, n in (layers_at or {}).items() if n}
    if not counts:
        return "float"
    return " ".join(f"{'fp32' if b == FLOAT else b}x{counts[b]}" for b in sorted(counts, key=lambda b: (b == FLOAT, -b)))


def rows(quantize: dict, export: dict, benchmark: dict | None) -> list[dict]:
    """One row per exported variant: widths, weights and file size, BOPS, the deployed artifact's accuracy and
    UAR with their intervals, the fake-quantized (QAT) accuracy, batch-1 latency; and its place on the fronts."""
    bench = (benchmark or {}).get("variants", {})
    versus = ((benchmark or {}).get("versus_fp32") or {}).get("variants", {})
    out = []
    for name, e in export["variants"].items():
        q, b = quantize["variants"].get(name, {}), bench.get(name, {})
        acc, uar = e["deployed"]["accuracy"], e["deployed"]["uar"]
        lat = b.get("latency_ms") or {}
        out.append({"variant": name, "bits": bits_summary(q.get("layers_at")), "weights_kib": q.get("weights_kib"),
                    "file_kib": e["file_kib"], "bops_g": q.get("bops_g"),
                    "accuracy": acc["value"], "accuracy_lo": acc["ci"][0], "accuracy_hi": acc["ci"][1],
                    "uar": uar["value"], "uar_lo": uar["ci"][0], "uar_hi": uar["ci"][1],
                    "fake_quant_accuracy": (q.get("qat") or {}).get("accuracy", {}).get("value"),
                    "p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"),
                    "speedup_vs_fp32": (versus.get(name) or {}).get("speedup_vs_fp32")})
    for key, flag in (("file_kib", "front_size"), ("p50_ms", "front_latency")):
        front = pareto([r for r in out if r[key] is not None], key)
        for r in out:
            r[flag] = r["variant"] in front
    return out


def pareto(rows_: list[dict], cost: str, score: str = "accuracy") -> list[str]:
    """The variants no other beats on both cost (lower) and score (higher), by increasing cost."""
    front = [r for r in rows_ if not any(
        o[cost] <= r[cost] and o[score] >= r[score] and (o[cost], o[score]) != (r[cost], r[score]) for o in rows_)]
    return [r["variant"] for r in sorted(front, key=lambda r: r[cost])]


def best_for(rows_: list[dict], *, max_kib: float | None = None, max_ms: float | None = None) -> dict | None:
    """The most accurate variant within a file-size and/or latency budget (ties: the smaller file)."""
    fit = [r for r in rows_ if (max_kib is None or r["file_kib"] <= max_kib)
           and (max_ms is None or (r["p50_ms"] is not None and r["p50_ms"] <= max_ms))]
    return max(fit, key=lambda r: (r["accuracy"], -r["file_kib"])) if fit else None


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(case: str, rows_: list[dict], spread: str) -> str:
    """The budget table of one case, and how to read it."""
    text = (f"Deployed accuracy and UAR: the exported artifact in the deployed runtime on the test split, with the "
            f"interval of a {spread}. On the front (*): no other variant is both smaller (or faster) and more "
            f"accurate. Take the most accurate front variant that fits your budget.")
    lines = [f"### {case}: the best variant for a budget", "", *textwrap.wrap(text, 110), "",
             "| variant | widths | weights KiB | file KiB | BOPS G | deployed accuracy % | deployed UAR % | fake-quant (QAT) % "
             "| p50 / p95 ms | vs fp32 | front: size / latency |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows_:
        lat = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.3f} / {r['p95_ms']:.3f}"
        speed = "-" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}x"
        lines.append(f"| {r['variant']} | {r['bits']} | {r['weights_kib'] or 0:.1f} | {r['file_kib']:.1f} "
                     f"| {r['bops_g'] or 0:.3g} | {_pct(r['accuracy'])} [{_pct(r['accuracy_lo'])}, {_pct(r['accuracy_hi'])}] "
                     f"| {_pct(r['uar'])} [{_pct(r['uar_lo'])}, {_pct(r['uar_hi'])}] | {_pct(r['fake_quant_accuracy'])} "
                     f"| {lat} | {speed} | {'*' if r['front_size'] else ''} / {'*' if r['front_latency'] else ''} |")
    return "\n".join(lines) + "\n"


def plot(rows_: list[dict], cost: str, path, title: str, xlabel: str, log: bool = True) -> None:
    """Deployed accuracy (with its interval) against `cost`, each point labelled, the front as a line,
    the accuracy axis zoomed to the data."""
    pts = [r for r in rows_ if r[cost] is not None]
    front = {v: i for i, v in enumerate(pareto(pts, cost))}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for r in pts:
        on = r["variant"] in front
        ax.errorbar(r[cost], 100 * r["accuracy"], yerr=[[100 * (r["accuracy"] - r["accuracy_lo"])],
                                                        [100 * (r["accuracy_hi"] - r["accuracy"])]],
                    fmt="o", color="tab:red" if on else "tab:gray", capsize=3, ms=6 if on else 4)
        ax.annotate(r["variant"], (r[cost], 100 * r["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    line = sorted((r for r in pts if r["variant"] in front), key=lambda r: r[cost])
    ax.plot([r[cost] for r in line], [100 * r["accuracy"] for r in line], "-", color="tab:red", alpha=0.5,
            label="Pareto front")
    lo = min(100 * r["accuracy_lo"] for r in pts)
    hi = max(100 * r["accuracy_hi"] for r in pts)
    ax.set_ylim(lo - 0.1 * (hi - lo) - 0.5, hi + 0.1 * (hi - lo) + 0.5)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("deployed accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
