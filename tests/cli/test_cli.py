"""The ``ember`` command end to end on a tiny checkpoint, in a subprocess like a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest


def run_ember(*args, stdin: str | None = None, timeout: int = 180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ember.cli.main", *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_prompt_streams_text_and_prints_summary(tiny_checkpoint):
    r = run_ember("-m", str(tiny_checkpoint), "-n", "12", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != ""
    summary = r.stderr.strip().splitlines()[-1]
    for field in ("prompt tokens: 5", "generated tokens: 12", "time to first token", "prefill", "decode"):
        assert field in summary
    assert "CPU path" in r.stderr


def test_greedy_is_deterministic_and_seed_reproduces(tiny_checkpoint):
    a = run_ember("-m", str(tiny_checkpoint), "-n", "8", "--seed", "3", "--temp", "1.0")
    b = run_ember("-m", str(tiny_checkpoint), "-n", "8", "--seed", "3", "--temp", "1.0")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


@pytest.mark.parametrize("flags,folded", [([], True), (["--no-fold-norms"], False)])
def test_fold_norms_flag_reaches_the_engine(tiny_checkpoint, monkeypatch, capsys, flags, folded):
    """`ember` and `ember serve` hand --no-fold-norms to the LLM (its effect: tests/models/test_qwen3_fold.py)."""
    import ember.entrypoints.llm as llm_module
    from ember.cli.main import main as ember_main
    from ember.errors import EmberError
    from ember.server.cli import main as serve_main

    seen = []

    def fake_llm(*args, **kwargs):
        seen.append(kwargs["fold_norms"])
        raise EmberError("stop here")  # both commands turn this into one error line, exit 1

    monkeypatch.setattr(llm_module, "LLM", fake_llm)
    assert ember_main(["-m", str(tiny_checkpoint), "-p", "x", *flags]) == 1
    assert serve_main([str(tiny_checkpoint), *flags]) == 1
    assert seen == [folded, folded]


def test_chat_flag_and_no_think(tiny_checkpoint):
    from ember.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_checkpoint)
    chat = [{"role": "user", "content": "Hi"}]
    for flag, thinking in (("--no-think", False), ("--think", True)):
        r = run_ember("-m", str(tiny_checkpoint), "-n", "4", "--chat", flag, "-p", "Hi")
        assert r.returncode == 0, r.stderr
        expected = len(tok.encode(tok.apply_chat_template(chat, enable_thinking=thinking)))
        assert f"prompt tokens: {expected} " in r.stderr
    assert len(tok.encode(tok.apply_chat_template(chat, enable_thinking=False))) > len(
        tok.encode(tok.apply_chat_template(chat, enable_thinking=True))
    )


def test_interactive_chat_through_stdin(tiny_checkpoint):
    r = run_ember("-m", str(tiny_checkpoint), "-i", "-n", "6", "--temp", "0",
                  stdin="Hello\n/reset\nAgain\n/exit\nnot read\n")
    assert r.returncode == 0, r.stderr
    assert "(conversation cleared)" in r.stdout
    assert "Traceback" not in r.stderr


@pytest.fixture()
def broken_folders(tmp_path, tiny_checkpoint):
    def copy(name):
        dst = tmp_path / name
        shutil.copytree(tiny_checkpoint, dst)
        return dst

    no_config = copy("no_config")
    (no_config / "config.json").unlink()
    unsupported = copy("unsupported")
    cfg = json.loads((unsupported / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (unsupported / "config.json").write_text(json.dumps(cfg))
    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    lying = copy("lying")
    header = json.dumps({"x": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    (lying / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    return {
        "missing": (tmp_path / "does-not-exist", "no such folder"),
        "no_config": (no_config, "no config.json"),
        "unsupported": (unsupported, "LlamaForCausalLM"),
        "truncated": (truncated, "model.safetensors"),
        "lying": (lying, "model.safetensors"),
    }


@pytest.mark.parametrize("case", ["missing", "no_config", "unsupported", "truncated", "lying"])
def test_bad_model_folder_gives_one_clear_line(broken_folders, case):
    folder, expected = broken_folders[case]
    r = run_ember("-m", str(folder), "-n", "2")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("ember: error:")]
    assert len(errors) == 1 and expected in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_verbose_shows_traceback(broken_folders):
    folder, _ = broken_folders["unsupported"]
    r = run_ember("-m", str(folder), "-v")
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_prompt_longer_than_context(tiny_checkpoint):
    r = run_ember("-m", str(tiny_checkpoint), "-c", "16", "-p", "word " * 40)
    assert r.returncode == 1
    assert "ember: error:" in r.stderr and "context" in r.stderr
    assert "Traceback" not in r.stderr


def test_context_larger_than_model_rejected(tiny_checkpoint):
    r = run_ember("-m", str(tiny_checkpoint), "-c", "999999")
    assert r.returncode == 1 and "exceeds the model's maximum" in r.stderr


def test_hub_id_offline_gives_clear_error(tmp_path):
    env_home = tmp_path / "hf"
    r = subprocess.run(
        [sys.executable, "-m", "ember.cli.main", "-m", "Qwen/Qwen3-0.6B", "-n", "1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(env_home)},
    )
    assert r.returncode == 1
    assert "ember: error:" in r.stderr and "offline" in r.stderr.lower()
    assert "Traceback" not in r.stderr
