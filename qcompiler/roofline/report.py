"""The roofline report: per-kernel rows against the ceilings, a whole-model summary, and its four
renderings (terminal table, JSON, Markdown, log-log PNG).

Per kernel: attained = ops / time; intensity = ops / compulsory bytes (inputs read once, outputs
written once); roof = min(compute ceiling of the kernel's class, DRAM triad bandwidth x intensity);
bound = whichever term is smaller. Times count every call site (a kernel called 6 times weighs 6
times). The whole-model "% of roof" is time-weighted, which equals (sum of the kernels' times at
their roofs) / (sum of their measured times). A kernel whose data stays in cache can beat the DRAM
roof (over 100%): the roof assumes its compulsory traffic comes from DRAM.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from ..errors import QCompilerError
from ..output_files import atomic_output
from .ceilings import Ceilings
from .inventory import KernelInfo


@dataclass
class KernelRoof:
    name: str
    op: str
    integer: bool
    shapes: str
    calls: int
    op_class: str
    ops: int                    # per call
    min_bytes: int              # per call
    intensity: float            # ops / byte
    seconds: float | None       # median per call (None: not timed, e.g. a target this machine can't run)
    samples: list = field(default_factory=list)
    attained_gops: float | None = None
    attained_gbs: float | None = None   # compulsory bytes / time
    roof_gops: float = 0.0
    ideal_seconds: float = 0.0          # per call, at the roof
    percent_of_roof: float | None = None
    bound: str = ""             # "compute" or "memory"
    share: float | None = None  # of the model's total kernel time

    @property
    def total_seconds(self) -> float:
        return (self.seconds or 0.0) * self.calls

    @property
    def lost_seconds(self) -> float:
        """Time over what the roof allows, all calls."""
        if self.seconds is None:
            return 0.0
        return max(0.0, self.calls * (self.seconds - self.ideal_seconds))


def kernel_roof(kernel: KernelInfo, ceilings: Ceilings, samples: list[float] | None) -> KernelRoof:
    """The kernel against the roof. Its time at the roof is max(ops / compute ceiling, bytes / DRAM
    bandwidth), which also covers pure data movement (a transpose has no ops: its roof is bandwidth)."""
    compute = ceilings.get(kernel.op_class) or ceilings.get("int8")
    dram = ceilings.get("dram")
    if compute is None or dram is None:
        raise QCompilerError(f"ceilings for {kernel.op_class} compute and DRAM are missing: remeasure them")
    compute_seconds = kernel.ops / (compute.value * 1e9)
    memory_seconds = kernel.min_bytes / (dram.value * 1e9)
    ideal = max(compute_seconds, memory_seconds)
    row = KernelRoof(kernel.name, kernel.op, kernel.integer, kernel.shapes, kernel.calls, kernel.op_class, kernel.ops,
                     kernel.min_bytes, kernel.ops / kernel.min_bytes if kernel.min_bytes else 0.0, None,
                     list(samples or []), roof_gops=kernel.ops / ideal / 1e9 if ideal else 0.0,
                     ideal_seconds=ideal, bound="compute" if compute_seconds >= memory_seconds else "memory")
    if samples:
        row.seconds = float(median(samples))
        row.attained_gops = kernel.ops / row.seconds / 1e9
        row.attained_gbs = kernel.min_bytes / row.seconds / 1e9
        row.percent_of_roof = 100.0 * ideal / row.seconds
    return row


@dataclass
class RooflineReport:
    source: str
    target: str
    threads: int
    ceilings: Ceilings
    kernels: list

    def __post_init__(self):
        total = self.total_seconds
        for row in self.kernels:
            row.share = row.total_seconds / total if total else None

    @property
    def timed(self) -> bool:
        return any(row.seconds is not None for row in self.kernels)

    @property
    def total_seconds(self) -> float:
        return sum(row.total_seconds for row in self.kernels)

    @property
    def percent_of_roof(self) -> float | None:
        """Time-weighted % of roof: sum of roof times / sum of measured times."""
        if not self.timed:
            return None
        ideal = sum(row.calls * row.ideal_seconds for row in self.kernels if row.seconds is not None)
        return 100.0 * ideal / self.total_seconds

    def top_losses(self, count: int = 5) -> list:
        """The kernels losing the most time against their roofs."""
        return sorted((r for r in self.kernels if r.seconds is not None), key=lambda r: -r.lost_seconds)[:count]

    # ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        def row_json(row):
            return {**asdict(row), "total_seconds": row.total_seconds, "lost_seconds": row.lost_seconds}
        return {
            "source": self.source, "target": self.target, "threads": self.threads,
            "ceilings": self.ceilings.to_json(),
            "summary": {"kernels": len(self.kernels), "total_seconds": self.total_seconds if self.timed else None,
                        "percent_of_roof": self.percent_of_roof,
                        "top_losses": [{"name": r.name, "op": r.op, "lost_seconds": r.lost_seconds}
                                       for r in self.top_losses()]},
            "kernels": [row_json(row) for row in self.kernels],
        }

    def _ceiling_lines(self) -> list[str]:
        lines = []
        for c in sorted(self.ceilings.entries, key=lambda c: (c.kind, c.op_class, c.threads)):
            lines.append(f"{c.name}, {c.threads} thread(s): {c.value:,.1f} {c.unit} ({c.source})")
        return lines

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["kernel", "op", "class", "calls", "shapes", "ops/call", "bytes/call", "ops/B", "us/call",
                  "GOP/s", "GB/s", "roof GOP/s", "% roof", "bound", "share"]
        rows = []
        for r in sorted(self.kernels, key=lambda r: -r.total_seconds):
            rows.append([r.name, r.op, r.op_class, str(r.calls), r.shapes, f"{r.ops:,}", f"{r.min_bytes:,}",
                         f"{r.intensity:.2f}", "-" if r.seconds is None else f"{r.seconds * 1e6:,.2f}",
                         "-" if r.attained_gops is None else f"{r.attained_gops:,.1f}",
                         "-" if r.attained_gbs is None else f"{r.attained_gbs:,.1f}", f"{r.roof_gops:,.1f}",
                         "-" if r.percent_of_roof is None else f"{r.percent_of_roof:.0f}%", r.bound,
                         "-" if r.share is None else f"{100 * r.share:.1f}%"])
        return header, rows

    def _summary_lines(self) -> list[str]:
        lines = [f"model: {self.source}", f"target: {self.target}, {self.threads} thread(s)"]
        if self.timed:
            lines.append(f"total kernel time: {self.total_seconds * 1e6:,.1f} us per inference; "
                         f"time-weighted % of roof: {self.percent_of_roof:.0f}%")
            lines.append("most time lost against the roof: " + "; ".join(
                (r.name if r.op in r.name else f"{r.name} ({r.op})") + f" {r.lost_seconds * 1e6:,.1f} us"
                for r in self.top_losses(3)))
        else:
            lines.append("kernels not timed (this machine cannot run the target): intensities and roofs only")
        return lines

    def to_table(self) -> str:
        header, rows = self._rows()
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        right = {3, 5, 6, 7, 8, 9, 10, 11, 12, 14}

        def fmt(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = self._summary_lines() + ["ceilings:"] + ["  " + line for line in self._ceiling_lines()] + [""]
        out += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
        return "\n".join(line.rstrip() for line in out) + "\n"

    def to_markdown(self) -> str:
        header, rows = self._rows()
        out = ["# Roofline: " + self.source, ""] + [f"- {line}" for line in self._summary_lines()[1:]]
        out += ["", "## Ceilings", ""] + [f"- {line}" for line in self._ceiling_lines()]
        out += ["", "## Kernels", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return "\n".join(out) + "\n"

    def render(self, fmt: str) -> str:
        if fmt == "table":
            return self.to_table()
        if fmt == "json":
            return json.dumps(self.to_json(), indent=1) + "\n"
        if fmt == "md":
            return self.to_markdown()
        raise QCompilerError(f"unknown report format {fmt!r}: use table, json or md")

    def plot(self, path: str | os.PathLike) -> Path:
        """A log-log roofline PNG: ceilings as lines, one dot per kernel (area ~ share of time)."""
        from .plot import plot_roofline
        with atomic_output(path, "plot", ".png") as tmp:
            plot_roofline(self, tmp)
        return Path(path)
