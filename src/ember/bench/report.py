"""The run's results as a terminal table (rich), JSON, Markdown and a PNG plot.

The terminal and the Markdown show the same rows, built once here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

GiB = 1 << 30

RESULT_HEADERS = ["batch", "prompt", "TTFT ms", "prefill tok/s", "prefill % roof", "decode tok/s",
                  "ms/token", "decode % roof", "roofline decode tok/s", "peak mem GiB"]
HF_HEADERS = ["batch", "prompt", "HF variant", "HF prefill tok/s", "HF decode tok/s",
              "Ember ÷ HF prefill", "Ember ÷ HF decode", "note"]
PROFILE_HEADERS = ["kernel", "calls", "time µs", "share of step"]


def number(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def spread(stat: dict | None, digits: int = 0) -> str:
    """'median (min–max)'."""
    if not stat:
        return "–"
    return f"{number(stat['median'], digits)} ({number(stat['min'], digits)}–{number(stat['max'], digits)})"


def percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def times(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def result_rows(result: dict) -> list[list[str]]:
    rows = []
    for r in result["results"]:
        e, share = r["ember"], r["share_of_roofline"]
        if e["skipped"] is not None:
            rows.append([str(r["batch_size"]), str(r["prompt_len"]), f"skipped: {e['skipped']}"] + [""] * 7)
            continue
        rows.append([
            str(r["batch_size"]), str(r["prompt_len"]), spread(e["ttft_ms"], 1), spread(e["prefill_tok_s"]),
            percent(share["prefill"]), spread(e["decode_tok_s"]), spread(e["ms_per_token"], 2),
            percent(share["decode"]), number(r["roofline"]["decode"]["tok_s"]),
            number(e["peak_memory_bytes"] / GiB, 2),
        ])
    return rows


def hf_rows(result: dict) -> list[list[str]]:
    rows = []
    for r in result["results"]:
        for variant, figures in (r["hf"] or {}).items():
            ratios = r["ember_over_hf"][variant]
            note = figures.get("skipped") or figures.get("error") or figures.get("warning") or ""
            rows.append([
                str(r["batch_size"]), str(r["prompt_len"]), variant,
                number(figures.get("prefill_tok_s", {}).get("median")), number(figures.get("decode_tok_s", {}).get("median")),
                times(ratios["prefill"]), times(ratios["decode"]), note.splitlines()[0][:120] if note else "",
            ])
    return rows


def profile_rows(phase: dict) -> list[list[str]]:
    return [[k["name"][:90], str(k["calls"]), number(k["time_us"], 1), percent(k["share_of_step"])] for k in phase["top"]]


def _readings(ceiling: dict, unit: float) -> str:
    """", the higher of a and b": the two readings behind a ceiling (older results have one)."""
    readings = ceiling.get("readings")
    if not readings:
        return ""
    return ", the higher of " + " and ".join(f"{r / unit:.3f}" for r in readings)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    escape = lambda s: s.replace("|", "\\|")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    env, model, c = result["environment"], result["model"], result["ceilings"]
    clocks = f"SM {env['sm_clock_mhz'] or '–'} / mem {env['mem_clock_mhz'] or '–'} MHz"
    parts = [
        f"# ember bench: {model['name']} on {env['gpu_name']}",
        f"{result['date']} · `{result['command']}`",
        f"- **Device:** {env['gpu_name']}, {clocks}, driver {env['driver'] or '–'}, CUDA {env['cuda'] or '–'}",
        f"- **Software:** torch {env['torch']}, triton {env['triton']}, transformers {env['transformers'] or '–'}, "
        f"ember {env['ember']}",
        f"- **Model:** {model['layers']} layers, hidden {model['hidden']}, {model['heads']} heads / "
        f"{model['kv_heads']} KV heads × {model['head_dim']}, {model['params'] / 1e9:.3f} B params, {model['dtype']}, "
        f"weights {model['load_format']}",
        f"- **Ceilings (same run):** copy {c['copy']['bytes_per_s'] / 1e12:.3f} TB/s read+written "
        f"({c['copy']['bytes'] / GiB:.3g} GiB{_readings(c['copy'], 1e12)}), "
        f"matmul {c['matmul']['flop_per_s'] / 1e12:.2f} TFLOP/s "
        f"({c['matmul']['dtype']}, n={c['matmul']['n']}{_readings(c['matmul'], 1e12)})",
        "",
        "Figures are medians (min–max) over the reps. Decode tok/s is over all sequences; the decode roofline "
        "is (weights + KV at the mean context) ÷ copy rate, the prefill roofline FLOPs ÷ matmul rate.",
        "",
        md_table(RESULT_HEADERS, result_rows(result)),
    ]
    built = [(r["batch_size"], r["prompt_len"], b) for r in result["results"]
             for b in (r["ember"] or {}).get("triton_builds") or []]
    if built:  # the warm-up should have built everything: these reps paid for a compile
        parts += ["", "**Triton kernels built during timed reps:** " + "; ".join(
            f"batch {bs}, prompt {pl}: {b['kernel']} ({b['seconds'] or 0:.2f} s)" for bs, pl, b in built)]
    if any(r["hf"] for r in result["results"]):
        parts += ["", "## Ember ÷ HF transformers", "", md_table(HF_HEADERS, hf_rows(result))]
    prof = result["profile"]
    if prof:
        parts += ["", f"## Profile: batch {prof['batch_size']}, prompt {prof['prompt_len']} ({prof['measure']})"]
        for phase in ("prefill", "decode"):
            parts += ["", f"### {phase} (step wall time {prof[phase]['wall_ms']:.2f} ms)", "",
                      md_table(PROFILE_HEADERS, profile_rows(prof[phase]))]
    parts += ["", "![tok/s](bench.png)", ""]
    return "\n".join(parts)


def _rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h in ("kernel", "HF variant", "note") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_summary(result: dict, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: wide rows beat 80-column wrapping
            console = Console(width=200)
    env, model = result["environment"], result["model"]
    console.print(_rich_table(f"ember bench: {model['name']} on {env['gpu_name']} ({model['dtype']})",
                              RESULT_HEADERS, result_rows(result)))
    if any(r["hf"] for r in result["results"]):
        console.print(_rich_table("Ember ÷ HF transformers", HF_HEADERS, hf_rows(result)))
    prof = result["profile"]
    if prof:
        for phase in ("prefill", "decode"):
            title = (f"profile {phase}: batch {prof['batch_size']}, prompt {prof['prompt_len']}, "
                     f"{prof[phase]['wall_ms']:.2f} ms ({prof['measure']})")
            console.print(_rich_table(title, PROFILE_HEADERS, profile_rows(prof[phase])))


def finite(obj):
    """NaN/inf (a zero-time rep, an empty run) become null, so the file stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json_md(out_dir: Path, stem: str, result: dict, md: str) -> list[Path]:
    """``<stem>.json`` (strict JSON) and ``<stem>.md`` in ``out_dir``, created if needed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
    md_path.write_text(md)
    return [json_path, md_path]


def write_all(result: dict, out_dir: Path) -> list[Path]:
    from ember.bench.plot import plot

    png_path = Path(out_dir) / "bench.png"
    paths = write_json_md(out_dir, "bench", result, markdown(result))
    plot(result, png_path)
    return [*paths, png_path]
