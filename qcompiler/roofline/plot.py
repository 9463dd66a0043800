"""The log-log roofline picture (matplotlib, no display needed).

x: arithmetic intensity (ops per byte of compulsory traffic), y: GOP/s. Compute ceilings are
horizontal lines, bandwidth ceilings slanted lines (GB/s x intensity) up to where they meet the
highest compute ceiling; each timed kernel is a dot at (intensity, attained GOP/s), its area
proportional to its share of the model's time; the LABELS largest are labelled by op (and call count
when > 1), the table has every kernel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

COLORS = {"int8": "tab:blue", "fp32": "tab:orange", "dram": "tab:green", "l2": "tab:olive"}
LABELS = 16  # the kernels with the largest shares of time get a label


def plot_roofline(report, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = report.threads
    ceilings = [c for c in report.ceilings.entries if c.threads == threads] or report.ceilings.entries
    compute = [c for c in ceilings if c.kind == "compute"]
    memory = [c for c in ceilings if c.kind == "memory" and c.name != "DRAM copy"]  # the triad is the roof
    # pure data movement (no ops: transposes, copies) has no place on an ops axis; the table has it
    rows = [r for r in report.kernels if r.attained_gops and r.ops]
    intensities = [r.intensity for r in report.kernels if r.ops] or [1.0]
    top = max(c.value for c in compute) if compute else max(r.roof_gops for r in report.kernels)
    x_lo = min(min(intensities) / 4, 0.05)
    x_hi = max(max(intensities) * 4, top / min(c.value for c in memory) * 4 if memory else 100)

    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    xs = np.logspace(np.log10(x_lo), np.log10(x_hi), 200)
    for c in compute:
        ax.axhline(c.value, color=COLORS.get(c.op_class, "gray"), lw=1.8)
        ax.text(x_hi, c.value * 1.04, f"{c.name}: {c.value:,.0f} GOP/s", ha="right", va="bottom", fontsize=8,
                color=COLORS.get(c.op_class, "gray"))
    for c in memory:
        ys = np.minimum(c.value * xs, top)
        ax.plot(xs, ys, color=COLORS.get(c.op_class, "gray"), lw=1.4, ls="--")
        x_text = x_lo * 1.5
        ax.text(x_text, c.value * x_text * 1.15, f"{c.name}: {c.value:,.1f} GB/s", fontsize=8, rotation=0,
                color=COLORS.get(c.op_class, "gray"))
    if rows:
        total = sum(r.share or 0 for r in rows) or 1.0
        labelled = {id(r) for r in sorted(rows, key=lambda r: -(r.share or 0))[:LABELS]}
        for r in rows:
            size = 30 + 1500 * (r.share or 0) / total
            ax.scatter([r.intensity], [r.attained_gops], s=size, alpha=0.6,
                       color=COLORS.get(r.op_class, "gray"), edgecolors="black", linewidths=0.6, zorder=3)
            if id(r) in labelled:
                op = r.op if len(r.op) <= 28 else r.op[:27] + "…"
                label = op + (f" x{r.calls}" if r.calls > 1 else "")
                ax.annotate(label, (r.intensity, r.attained_gops), textcoords="offset points", xytext=(6, 4),
                            fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    y_values = [r.attained_gops for r in rows] + [c.value * x_lo for c in memory]
    ax.set_ylim(max(min(y_values + [top]) / 3, 1e-3), top * 2)
    ax.set_xlabel("arithmetic intensity (ops per byte of compulsory DRAM traffic)")
    ax.set_ylabel("GOP/s")
    summary = f", {report.percent_of_roof:.0f}% of roof (time-weighted)" if report.timed else ""
    hidden = sum(1 for r in report.kernels if not r.ops)
    if hidden:
        summary += f"; {hidden} data-movement kernel(s) not shown"
    ax.set_title(f"{Path(report.source).name} on {report.ceilings.cpu}, {threads} thread(s)\n{summary.lstrip(', ')}; "
                 "dot area = share of time; blue = int8, orange = fp32", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
