"""benchmarks/throughput.py and benchmarks/serve_load.py end to end on the tiny checkpoint (CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load_script(name: str):
    """The scripts live outside the package, so import them by path."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_workload_is_seeded_and_in_range():
    tp = load_script("throughput")
    prompts, out_lens = tp.workload(256, 100, 1024, 0)
    assert (prompts, out_lens) == tp.workload(256, 100, 1024, 0)
    assert len(prompts) == len(out_lens) == 256
    assert all(100 <= len(p) <= 1024 and any(p) and 0 <= min(p) and max(p) < 10_000 for p in prompts)
    assert all(100 <= n <= 1024 for n in out_lens)


def test_throughput_small_with_hf(tiny_checkpoint, tmp_path):
    tp = load_script("throughput")
    # Greedy keeps the CPU run short (sampling runs its kernel in Triton's interpreter).
    tp.main(["-m", str(tiny_checkpoint), "--load-format", "dummy", "--small", "--temperature", "0",
             "--compare", "hf", "--hf-num-requests", "5", "--device", "cpu", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "throughput.json").read_text())
    assert set(r) == {"schema_version", "date", "command", "environment", "model", "workload", "ember", "hf",
                      "ember_over_hf"}
    w = r["workload"]
    assert (w["num_requests"], w["min_len"], w["max_len"], w["ignore_eos"]) == (8, 4, 16, True)
    assert r["model"]["weights"].startswith("random checkpoint written once")
    assert r["environment"]["gpu_name"] == "cpu" and r["environment"]["transformers"]
    prompts, out_lens = tp.workload(8, 4, 16, 0)
    assert r["hf"]["num_requests"] == 5  # HF ran the first 5 requests only
    assert r["hf"]["output_tokens"] == sum(out_lens[:5]) and r["hf"]["prompt_tokens"] == sum(map(len, prompts[:5]))
    for engine in ("ember", "hf"):
        f = r[engine]
        for key in ("elapsed_s", "output_tok_s", "total_tok_s"):
            assert positive(f[key]), (engine, key)
        assert f["total_tok_s"] > f["output_tok_s"]
    assert r["ember"]["preemptions"] == 0 and r["ember"]["engine"]["max_num_seqs"] == 256
    assert r["hf"]["generated_tokens_incl_batch_padding"] >= r["hf"]["output_tokens"] and "left-padded" in r["hf"]["how"]
    assert positive(r["ember_over_hf"])
    md = (tmp_path / "throughput.md").read_text()
    assert "| Ember |" in md and "HF ran the first 5 of the 8 requests" in md
    # CPU runs the references: no Triton kernel is built, and the run says so (the test below
    # simulates one)
    assert r["ember"]["triton_builds"] == [] and "built during Ember's timed run: none." in md
    assert all(g["max_ms"] >= g["ms_per_step"] > 0 for g in r["ember"]["steps"].values())


def test_throughput_reports_a_kernel_built_in_the_timed_run(tiny_checkpoint, tmp_path, monkeypatch):
    # On CPU nothing is built, so the run above can only report "none". Here a build is simulated
    # the way Triton's JIT announces one (its runtime hooks) inside the timed generate only (the
    # warm-up call has 3 prompts, the workload 8): it must be named in the JSON and the report.
    from types import SimpleNamespace

    import triton

    tp = load_script("throughput")

    class BuildingLLM(tp.LLM):
        def generate(self, prompts, *args, **kwargs):
            if len(prompts) > 3:
                runtime = triton.knobs.runtime
                info = SimpleNamespace(name="_simulated_kernel")
                if runtime.jit_cache_hook is not None:
                    runtime.jit_cache_hook(fn=info, key=None)
                if runtime.jit_post_compile_hook is not None:
                    runtime.jit_post_compile_hook(fn=info, key=None)
            return super().generate(prompts, *args, **kwargs)

    monkeypatch.setattr(tp, "LLM", BuildingLLM)
    tp.main(["-m", str(tiny_checkpoint), "--load-format", "dummy", "--small", "--temperature", "0",
             "--device", "cpu", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "throughput.json").read_text())
    assert [b["kernel"] for b in r["ember"]["triton_builds"]] == ["_simulated_kernel"]
    assert "built during Ember's timed run: _simulated_kernel ×1" in (tmp_path / "throughput.md").read_text()


def test_throughput_places_a_collection_in_the_step_it_slowed(tiny_checkpoint, tmp_path, monkeypatch):
    """The once-per-run slow step: every Python collection of the timed run is counted by
    generation and placed in the step it ran inside; the slowest steps carry their share."""
    import gc
    import time

    from ember.engine.llm_engine import LLMEngine

    tp = load_script("throughput")
    calls, step = [], LLMEngine.step

    def step_with_a_collection(self):
        calls.append(1)
        if len(calls) == 12:  # a step of the timed run (the warm-up takes fewer)
            gc.collect(2)
            time.sleep(0.3)  # and make it the slowest
        return step(self)

    monkeypatch.setattr(LLMEngine, "step", step_with_a_collection)
    tp.main(["-m", str(tiny_checkpoint), "--load-format", "dummy", "--small", "--temperature", "0",
             "--device", "cpu", "--out", str(tmp_path)])
    e = json.loads((tmp_path / "throughput.json").read_text())["ember"]
    assert e["gc"]["collections"]["2"] >= 1
    placed = [c for c in e["gc"]["longest"] if c["generation"] == 2 and c["step"] is not None]
    assert placed, e["gc"]
    slowest = e["slowest_steps"][0]
    assert slowest["ms"] >= 300 and slowest["gc_ms"] > 0 and slowest["step"] == placed[0]["step"]
    assert [s["ms"] for s in e["slowest_steps"]] == sorted((s["ms"] for s in e["slowest_steps"]), reverse=True)
    assert e["cuda_allocator"] is None  # CPU
    assert "Slowest steps: #" in (tmp_path / "throughput.md").read_text()


@pytest.mark.parametrize("client", ["raw", "openai"])
def test_serve_load_small(tiny_checkpoint, tmp_path, client):
    sl = load_script("serve_load")
    sl.main(["-m", str(tiny_checkpoint), "--device", "cpu", "--concurrency", "1,4", "--num-requests", "4",
             "--max-tokens", "4", "--prompt-len", "16", "--max-seconds", "30", "--client", client,
             "--out", str(tmp_path)])
    r = json.loads((tmp_path / "serve_load.json").read_text())
    assert r["settings"]["client"] == client
    assert set(r) == {"schema_version", "date", "command", "environment", "model", "server", "settings", "levels"}
    assert r["server"]["url"].startswith("http://127.0.0.1:") and r["server"]["how"].startswith("ember serve ")
    assert [lv["concurrency"] for lv in r["levels"]] == [1, 4]
    for lv in r["levels"]:
        assert (lv["requests"], lv["completed"], lv["errors"]) == (4, 4, 0), lv["first_error"]
        assert lv["output_tokens"] == 4 * 4 and positive(lv["output_tok_s"])
        for key in ("ttft_ms", "tpot_ms", "latency_ms"):
            d = lv[key]
            assert d["n"] == 4 and positive(d["p50"]) and d["p50"] <= d["p99"], key


def test_serve_load_refuses_non_loopback_url():
    sl = load_script("serve_load")
    with pytest.raises(SystemExit, match="loopback"):
        sl.main(["-m", "x", "--url", "http://10.0.0.1:8000"])


def test_offline_profile_windows(tiny_checkpoint, tmp_path):
    op = load_script("offline_profile")
    windows = op.main(["-m", str(tiny_checkpoint), "--num-requests", "4", "--min-len", "4", "--max-len", "12",
                       "--temperature", "0", "--windows", "0:2,4:3", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "offline_profile.json").read_text())
    assert [w["first_step"] for w in saved["windows"]] == [0, 4] and saved["windows"] == windows
    first, second = windows
    assert first["steps"] == 2 and first["prompt_tokens_per_step"] > 0  # the prompts run first
    assert second["decode_rows_per_step"] > 0 and positive(second["kv_read_gb_per_step"])
    assert all(positive(w["wall_ms_per_step"]) for w in windows)
