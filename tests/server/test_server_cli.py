"""`ember serve` as a user starts it: flags parse, it serves on loopback, SIGTERM/SIGINT stop it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_answers_and_shuts_down(tiny_checkpoint, sig):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ember.cli.main", "serve", str(tiny_checkpoint), "--port", str(port),
         "--device", "cpu", "--max-model-len", "128", "--max-num-seqs", "4", "--max-num-batched-tokens", "64",
         "--no-prefix-caching", "--enforce-eager", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.3)
        body = json.dumps({"model": str(tiny_checkpoint), "prompt": "Hi", "max_tokens": 3, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["usage"]["completion_tokens"] == 3
        proc.send_signal(sig)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells
        # what stopped it (SIGTERM: -15; SIGINT ends as KeyboardInterrupt, caught: 0).
        assert proc.wait(timeout=20) in (0, -sig)
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
