"""Test helpers: real uvicorn servers on 127.0.0.1 (a free port, one thread each), and a scripted
engine (test-only) that "generates" whatever token ids a test sets, to drive tool calls and
thinking end to end, which a random-weight model never emits."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

try:  # the HTTP client the openai package ships with: httpx2 in new releases, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx
import uvicorn

from ember import LLM
from ember.engine.llm_engine import StepOutput
from ember.engine.sequence import Sequence, SequenceStatus
from ember.server.api_server import build_app
from ember.tokenizer import IncrementalDetokenizer

API_KEY = "test-key"
MAX_MODEL_LEN = 256
MAX_BODY_BYTES = 64 * 1024


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    llm: LLM
    model: str
    api_key: str | None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def metric(self, name: str) -> float:
        """One sample's value from /metrics (the first line starting with ``name``)."""
        text = httpx.get(self.url + "/metrics").text
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(llm: LLM, model: str = "tiny", api_key: str | None = API_KEY, **app_kwargs):
    """Start uvicorn in a thread; yields a RunningServer, then shuts it down like SIGINT would."""
    app = build_app(llm, model, api_key=api_key, **app_kwargs)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", llm, model, api_key)
    finally:
        server.should_exit = True
        thread.join(10)
        assert not app.state.ember.engine.is_alive, "the engine thread did not stop"


def tiny_llm(checkpoint, **kwargs) -> LLM:
    kwargs = {"max_model_len": MAX_MODEL_LEN, "max_num_seqs": 32, **kwargs}
    return LLM(str(checkpoint), dtype="float32", device="cpu", progress=False, **kwargs)


# ----- the scripted engine (test-only) -----------------------------------------------------------

class ScriptedEngine:
    """Stands in for ``LLMEngine`` behind the server, through the same public API: each request
    emits the token ids of ``self.script`` (set by the test), one per step, and then stops as if
    at EOS. Tokenizer, config and limits are the real engine's."""

    def __init__(self, real):
        self.real = real
        self.script: list[int] = []
        self.step_delay = 0.0  # seconds per step, to keep a request running as long as a test needs
        self.running: list[Sequence] = []
        self.detokenizers: dict[int, IncrementalDetokenizer] = {}

    def __getattr__(self, name):  # tokenizer, config, max_model_len, generation_defaults, ...
        return getattr(self.real, name)

    def add_request(self, prompt_token_ids, params, request_id=None):
        seq = Sequence(prompt_token_ids, params, seed=0, request_id=request_id)
        seq.script = list(self.script)
        self.detokenizers[seq.seq_id] = IncrementalDetokenizer(self.real.tokenizer, prompt_token_ids, stop=params.stop)
        self.running.append(seq)
        return seq

    def step(self):
        time.sleep(self.step_delay)
        outputs = []
        for seq in list(self.running):
            token = seq.script[seq.num_output_tokens]
            seq.append(token)
            detok = self.detokenizers[seq.seq_id]
            text = detok.add(token)
            if detok.stopped:
                seq.finish_reason = "stop"
            elif seq.num_output_tokens == len(seq.script):
                seq.finish_reason, text = "stop", text + detok.flush()
            elif seq.num_output_tokens >= seq.params.max_tokens:
                seq.finish_reason, text = "length", text + detok.flush()
            if seq.finish_reason:
                self._finish(seq)
            outputs.append(StepOutput(seq, token, text, seq.is_finished, seq.num_output_tokens))
        return outputs

    def _finish(self, seq):
        seq.status = SequenceStatus.FINISHED
        self.running.remove(seq)

    def abort(self, seq):
        if not seq.is_finished:
            seq.finish_reason = "abort"
            self._finish(seq)
        self.detokenizers.pop(seq.seq_id, None)

    def has_unfinished(self):
        return bool(self.running)

    def output_text(self, seq):
        detok = self.detokenizers.get(seq.seq_id)
        return detok.text if detok else ""

    def stats(self):
        return {**self.real.stats(), "num_running": len(self.running)}


def scripted_llm(checkpoint, **kwargs) -> LLM:
    llm = tiny_llm(checkpoint, **kwargs)
    llm.engine = ScriptedEngine(llm.engine)
    return llm

