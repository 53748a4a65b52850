"""What a result was measured on: device, clocks, driver, library versions, date, command."""

from __future__ import annotations

import datetime as dt
import platform
import re
import shlex
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import ember

NVIDIA_SMI_FIELDS = {
    "name": "gpu_name_smi",
    "driver_version": "driver",
    "clocks.sm": "sm_clock_mhz",
    "clocks.mem": "mem_clock_mhz",
    "clocks.max.sm": "max_sm_clock_mhz",
    "clocks.max.mem": "max_mem_clock_mhz",
}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi(index: int) -> dict:
    """Clocks and driver from nvidia-smi; every field None when it is absent or fails."""
    empty = dict.fromkeys(NVIDIA_SMI_FIELDS.values())
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return empty
    query = ",".join(NVIDIA_SMI_FIELDS)
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", str(index)],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return empty
    values = [v.strip() for v in out.split(",")]
    result = {}
    for key, value in zip(NVIDIA_SMI_FIELDS.values(), values):
        result[key] = int(value) if value.isdigit() else (None if value in ("", "[N/A]") else value)
    return {**empty, **result}


def environment(device: torch.device) -> dict:
    on_gpu = device.type == "cuda"
    index = device.index or 0
    info = {
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(index) if on_gpu else "cpu",
        **(nvidia_smi(index) if on_gpu else dict.fromkeys(NVIDIA_SMI_FIELDS.values())),
        "cuda": torch.version.cuda if on_gpu else None,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "ember": ember.__version__,  # also right when run from a source tree (PYTHONPATH=src)
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "peak_memory_source": "torch.cuda.max_memory_allocated" if on_gpu else "process peak RSS",
    }
    info.pop("gpu_name_smi", None)
    return info


def command_line(argv: list[str]) -> str:
    return shlex.join(["ember", "bench", *argv])


def today() -> str:
    return dt.date.today().isoformat()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def default_out_dir(gpu_name: str, model: str, suffix: str = "") -> Path:
    """benchmarks/results/<date>-<gpu>-<model><suffix>/, e.g. 2026-11-22-h200-qwen3-8b; a later
    run on the same day gets -2, -3, ... rather than overwriting an earlier one."""
    gpu = slug(gpu_name.replace("NVIDIA", ""))
    base = Path("benchmarks") / "results" / f"{today()}-{gpu}-{slug(Path(model.rstrip('/')).name)}{suffix}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out
