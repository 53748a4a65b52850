"""``ember bench`` end to end on the tiny checkpoint (CPU), plus its formulas by hand."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from ember.bench import report
from ember.bench.roofline import ModelShape, decode_roofline, prefill_flops
from ember.cli.main import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_stat(x) -> bool:
    return (isinstance(x, dict) and {"median", "min", "max", "values"} <= set(x)
            and x["min"] <= x["median"] <= x["max"] and all(v > 0 for v in x["values"]))


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def bench_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "-m", str(tiny_checkpoint), "--configs", "small", "--batch-sizes", "2", "--prompt-lens", "12",
            "--gen-len", "4", "--reps", "2", "--compare", "hf", "--profile", "--max-model-len", "80", "--out", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_json_records_environment_model_and_ceilings(bench_run):
    _, r = bench_run
    assert set(r) == {"schema_version", "date", "command", "environment", "model", "settings", "engine",
                      "ceilings", "results", "profile"}
    assert r["command"].startswith("ember bench -m ") and "--compare hf" in r["command"]
    env = r["environment"]
    assert env["gpu_name"] == "cpu" and env["driver"] is None and env["sm_clock_mhz"] is None
    assert env["torch"] and env["triton"] and env["transformers"]
    m = r["model"]
    assert (m["layers"], m["hidden"], m["heads"], m["kv_heads"], m["head_dim"]) == (2, 64, 4, 2, 32)
    assert isinstance(m["params"], int) and m["params"] > 151936 * 64 and m["dtype"] == "float32"
    assert positive(r["ceilings"]["copy"]["bytes_per_s"]) and is_stat(r["ceilings"]["copy"]["rate_bytes_per_s"])
    assert positive(r["ceilings"]["matmul"]["flop_per_s"])
    # Each ceiling measured before and after the configurations; the higher reading is the roofline.
    for c, key in ((r["ceilings"]["copy"], "bytes_per_s"), (r["ceilings"]["matmul"], "flop_per_s")):
        assert len(c["readings"]) == 2 and all(positive(x) for x in c["readings"]) and c[key] == max(c["readings"])
    assert r["engine"]["kv_cache_tokens"] >= 2 * 16
    assert r["engine"]["max_model_len"] == r["settings"]["max_model_len"] == 80  # not the longest config (16)


def test_json_per_config_figures_and_ratios(bench_run):
    _, r = bench_run
    (c,) = r["results"]
    assert (c["batch_size"], c["prompt_len"], c["gen_len"]) == (2, 12, 4)
    e = c["ember"]
    assert e["skipped"] is None and e["preemptions"] == 0 and e["peak_memory_bytes"] > 0
    assert e["triton_builds"] == []  # CPU: the references run, nothing is built
    for key in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "decode_tok_s_per_seq", "ms_per_token"):
        assert is_stat(e[key]) and len(e[key]["values"]) == 2, key
    assert e["decode_tok_s"]["median"] == pytest.approx(2 * e["decode_tok_s_per_seq"]["median"])
    for phase in ("prefill", "decode"):
        assert positive(c["roofline"][phase]["tok_s"])
        assert positive(c["share_of_roofline"][phase])
    eager, compiled = c["hf"]["eager"], c["hf"]["static_compiled"]
    assert eager["error"] is None and is_stat(eager["decode_tok_s"]) and is_stat(eager["prefill_tok_s"])
    assert compiled["skipped"]  # not run on CPU, with the reason recorded
    assert positive(c["ember_over_hf"]["eager"]["prefill"]) and positive(c["ember_over_hf"]["eager"]["decode"])
    assert c["ember_over_hf"]["static_compiled"] == {"prefill": None, "decode": None}


def test_profile_top_kernels(bench_run):
    _, r = bench_run
    p = r["profile"]
    for phase in ("prefill", "decode"):
        top = p[phase]["top"]
        assert 0 < len(top) <= 15 and p[phase]["wall_ms"] > 0
        assert [k["time_us"] for k in top] == sorted((k["time_us"] for k in top), reverse=True)
        assert all(0 < k["share_of_step"] <= 1.5 and k["calls"] >= 1 for k in top)


def test_markdown_and_png(bench_run):
    out, _ = bench_run
    md = (out / "bench.md").read_text()
    assert "| batch | prompt | TTFT ms | prefill tok/s |" in md
    assert "| 2 | 12 |" in md and "Ember ÷ HF" in md and "## Profile" in md
    png = (out / "bench.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    assert matplotlib.image.imread(out / "bench.png").shape[0] > 100


def test_markdown_names_kernels_built_during_timed_reps(bench_run):
    _, r = bench_run
    assert "built during timed reps" not in report.markdown(r)
    r = copy.deepcopy(r)
    r["results"][0]["ember"]["triton_builds"] = [{"kernel": "_skinny_kernel", "seconds": 0.31}]
    assert "**Triton kernels built during timed reps:** batch 2, prompt 12: _skinny_kernel (0.31 s)" \
        in report.markdown(r)


def test_hf_table_notes_a_variant_that_did_not_compile(bench_run):
    _, r = bench_run
    r = copy.deepcopy(r)
    r["results"][0]["hf"]["eager"]["warning"] = "transformers did not compile the forward: static cache only"
    assert report.hf_rows(r)[0][-1] == "transformers did not compile the forward: static cache only"


def test_roofline_formulas_by_hand():
    shape = ModelShape(layers=2, hidden=8, intermediate=16, heads=4, kv_heads=2, head_dim=4, vocab=100,
                       tied_embeddings=True, params=1000, weight_bytes=2000, dtype="bfloat16", dtype_bytes=2)
    assert shape.kv_bytes_per_token() == 2 * 2 * 2 * 4 * 2
    d = decode_roofline(shape, batch_size=3, prompt_len=10, gen_len=4, copy_rate=1e6)
    assert d["bytes_per_step"] == 2000 + 3 * 12 * 64
    assert d["tok_s"] == pytest.approx(3 * d["tok_s_per_seq"]) == pytest.approx(3e6 / (2000 + 3 * 12 * 64))
    assert prefill_flops(shape, 3, 10) == 2 * 1000 * 30 + 4 * 2 * 4 * 4 * 3 * 100 / 2


def test_missing_transformers_is_a_clear_error(tiny_checkpoint, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    assert main(["bench", "-m", str(tiny_checkpoint), "--configs", "small", "--compare", "hf"]) == 1
    assert "needs Hugging Face transformers" in capsys.readouterr().err


def test_bad_max_model_len_is_rejected(tiny_checkpoint, capsys):
    assert main(["bench", "-m", str(tiny_checkpoint), "--max-model-len", "0"]) == 1
    assert "--max-model-len" in capsys.readouterr().err


def test_bad_gen_len_is_rejected(tiny_checkpoint, capsys):
    assert main(["bench", "-m", str(tiny_checkpoint), "--gen-len", "1"]) == 1
    assert "--gen-len must be >= 2" in capsys.readouterr().err


def test_default_out_dir_never_overwrites(tmp_path, monkeypatch):
    from ember.bench.environment import default_out_dir, today

    monkeypatch.chdir(tmp_path)
    first = default_out_dir("NVIDIA H200", "/models/Qwen3-8B/", "-serve")
    assert first == Path("benchmarks/results") / f"{today()}-h200-qwen3-8b-serve"
    first.mkdir(parents=True)
    second = default_out_dir("NVIDIA H200", "/models/Qwen3-8B/", "-serve")
    assert second.name == first.name + "-2"
    second.mkdir()
    assert default_out_dir("NVIDIA H200", "/models/Qwen3-8B/", "-serve").name == first.name + "-3"


def test_measure_config_reports_kernels_built_in_timed_reps_only(monkeypatch):
    # On CPU nothing is ever built, so the end-to-end run above can only show an empty list. Here
    # a build is simulated the way Triton's JIT announces one (its two runtime hooks), once in the
    # warm-up and once in the second timed rep: only the second may be reported.
    from types import SimpleNamespace

    import triton

    from ember.bench import ember_runner

    calls = []

    def fake_generate_once(engine, prompts, gen_len):
        calls.append(len(prompts))
        if len(calls) in (1, 3):  # the warm-up, then timed rep 1
            runtime = triton.knobs.runtime
            info = SimpleNamespace(name=f"_kernel_{len(calls)}")
            if runtime.jit_cache_hook is not None:
                assert not runtime.jit_cache_hook(fn=info, key=None)
            if runtime.jit_post_compile_hook is not None:
                runtime.jit_post_compile_hook(fn=info, key=None)
        return SimpleNamespace(prefill_s=0.01, decode_s=0.03)

    monkeypatch.setattr(ember_runner, "generate_once", fake_generate_once)
    monkeypatch.setattr(ember_runner, "fits", lambda *args: None)
    engine = SimpleNamespace(config=SimpleNamespace(vocab_size=1000), tokenizer=SimpleNamespace(vocab_size=1000),
                             scheduler=SimpleNamespace(num_preemptions=0), device="cpu")
    result = ember_runner.measure_config(SimpleNamespace(engine=engine), batch_size=2, prompt_len=8, gen_len=4,
                                         reps=2, seed=0)
    assert calls == [2, 2, 2]
    assert [b["kernel"] for b in result["triton_builds"]] == ["_kernel_3"]
    assert result["triton_builds"][0]["seconds"] >= 0
    assert triton.knobs.runtime.jit_post_compile_hook is None  # the watch put the hooks back


def test_ceiling_is_the_higher_of_two_measurements():
    from ember.bench.ceilings import higher

    low, high = {"bytes_per_s": 4.14e12, "reps": 10}, {"bytes_per_s": 4.22e12, "reps": 10}
    for pair in ((low, high), (high, low)):
        best = higher(*pair, "bytes_per_s")
        assert best["bytes_per_s"] == 4.22e12 and best["readings"] == [p["bytes_per_s"] for p in pair]
