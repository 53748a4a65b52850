"""The PNG: prefill and decode tok/s against prompt length, one colour per batch size, one line
style per source (Ember, HF eager, HF compiled, roofline), so each gap reads off one chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a benchmark host
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullLocator, ScalarFormatter  # noqa: E402

SOURCES = {  # label -> line style
    "Ember": dict(linestyle="-", marker="o"),
    "HF eager": dict(linestyle="--", marker="s"),
    "HF static+compile": dict(linestyle="-.", marker="^"),
    "roofline": dict(linestyle=":", marker=None, alpha=0.6),
}
HF_LABELS = {"eager": "HF eager", "static_compiled": "HF static+compile"}


def _series(result: dict, phase: str) -> dict[tuple[str, int], list[tuple[int, float]]]:
    """(source, batch size) -> [(prompt length, tok/s)] for one phase ("prefill" or "decode")."""
    key = f"{phase}_tok_s"
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}

    def add(source, r, value):
        if value is not None:
            series.setdefault((source, r["batch_size"]), []).append((r["prompt_len"], value))

    for r in result["results"]:
        add("roofline", r, r["roofline"][phase]["tok_s"])
        if r["ember"]["skipped"] is None:
            add("Ember", r, r["ember"][key]["median"])
        for variant, figures in (r["hf"] or {}).items():
            if key in figures:
                add(HF_LABELS[variant], r, figures[key]["median"])
    return series


def plot(result: dict, path: Path) -> Path:
    batch_sizes = sorted({r["batch_size"] for r in result["results"]})
    colors = {b: plt.cm.viridis(i / max(1, len(batch_sizes) - 1) * 0.85) for i, b in enumerate(batch_sizes)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    used_sources = set()
    for ax, phase in zip(axes, ("prefill", "decode")):
        for (source, batch), points in sorted(_series(result, phase).items()):
            points.sort()
            ax.plot([p for p, _ in points], [v for _, v in points], color=colors[batch], **SOURCES[source])
            used_sources.add(source)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["prompt_len"] for r in result["results"]}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(f"{phase} tok/s (all sequences)")
        ax.set_title(phase)
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colors[b], linestyle="-", label=f"batch {b}") for b in batch_sizes]
    handles += [Line2D([], [], color="gray", label=s, **SOURCES[s]) for s in SOURCES if s in used_sources]
    fig.legend(handles=handles, loc="center right", frameon=False)
    env, model = result["environment"], result["model"]
    fig.suptitle(f"{model['name']} ({model['dtype']}) on {env['gpu_name']}, {result['date']}")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
