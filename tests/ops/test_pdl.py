"""Programmatic Dependent Launch (ops/dispatch.py): the switch, and a decode layer's kernel chain.

The chain is one decoder layer of a decode step through every PDL kernel: embedding ->
add_rms_norm -> skinny qkv -> qk_norm_rope_store_kv -> split-K decode attention -> skinny o
(split-K) + residual add -> norm + skinny gate_up + silu -> skinny down (split-K) + residual add
-> rms_norm.

On CPU (Triton interpreter, no griddepcontrol) the USE_PDL=True code paths run with the gdc
calls replaced by counters: same results bitwise, every program syncs exactly once, and every
launch passes launch_pdl and USE_PDL together. On a GPU (sm_90+) the chain is captured in CUDA
graphs with PDL on and off and replayed with changing inputs: bitwise identical, also to eager.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from ember.ops import dispatch
from ember.ops.decode_attention import decode_counters_numel, decode_num_splits, decode_workspace_numel
from ember.ops.dispatch import pdl_enabled
from ember.ops.linear import SkinnyConfig
from ember.ops.rope import build_rope_cache

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
EPS = 1e-6
PDL_MODULES = ["embedding", "norm", "rope", "decode_attention", "skinny_gemm"]
mods = {name: importlib.import_module(f"ember.ops.{name}") for name in PDL_MODULES}
KERNELS = {
    "embedding": ["_embedding_kernel"],
    "norm": ["_rms_norm_kernel", "_add_rms_norm_kernel"],
    "rope": ["_qk_norm_rope_store_kv_kernel"],
    "decode_attention": ["_decode_split_kernel"],
    "skinny_gemm": ["_skinny_kernel"],
}
linear_ops = importlib.import_module("ember.ops.linear")  # the module (ember.ops.linear is the op)

TINY = dict(hidden=64, q_heads=4, kv_heads=2, head_dim=32, inter=96, vocab=50, block_size=8)
QWEN3_06B = dict(hidden=1024, q_heads=16, kv_heads=8, head_dim=128, inter=3072, vocab=4096, block_size=16)
# Small tiles so the tiny shapes span several programs, split K and a partial K step.
TINY_CONFIGS = dict(
    qkv=SkinnyConfig(16, 32, 1, 4, 2, True), o=SkinnyConfig(16, 32, 2, 4, 2, True),
    gate_up=SkinnyConfig(8, 32, 1, 4, 1, False), down=SkinnyConfig(8, 32, 2, 4, 1, False),
)


def make_layer(shape: dict, dtype: torch.dtype, device: str, seed: int = 0) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(seed)
    h, d, i = shape["hidden"], shape["head_dim"], shape["inter"]
    qkv_out = (shape["q_heads"] + 2 * shape["kv_heads"]) * d

    def rand(*size, scale=1.0, offset=0.0):
        return (offset + scale * torch.randn(size, generator=gen)).to(device=device, dtype=dtype)

    return SimpleNamespace(
        shape=shape, emb=rand(shape["vocab"], h), norm1=rand(h, scale=0.2, offset=1.0),
        qkv=rand(qkv_out, h, scale=h**-0.5), q_norm=rand(d, scale=0.2, offset=1.0), k_norm=rand(d, scale=0.2, offset=1.0),
        o=rand(h, shape["q_heads"] * d, scale=(shape["q_heads"] * d) ** -0.5), norm2=rand(h, scale=0.2, offset=1.0),
        gate_up=rand(2 * i, h, scale=h**-0.5), down=rand(h, i, scale=i**-0.5), norm3=rand(h, scale=0.2, offset=1.0),
        cos_sin=build_rope_cache(d, 4096, 1e6, None, device),
    )


def make_state(layer, batch: int, max_ctx: int, num_splits: int | None, seed: int = 1) -> SimpleNamespace:
    """Decode-step buffers of fixed address (as a graph needs): inputs, a random paged KV cache,
    the attention workspace and counters."""
    shape, dtype, device = layer.shape, layer.emb.dtype, layer.emb.device
    gen = torch.Generator().manual_seed(seed)
    bs = shape["block_size"]
    width = -(-max_ctx // bs)
    num_blocks = batch * width + 2
    cache_shape = (num_blocks, bs, shape["kv_heads"], shape["head_dim"])
    tables = torch.randperm(num_blocks, generator=gen)[: batch * width].view(batch, width).to(torch.int32)
    if num_splits is None:
        num_splits = decode_num_splits(batch, shape["kv_heads"], width, bs)
    return SimpleNamespace(
        ids=torch.zeros(batch, dtype=torch.int64, device=device),
        residual=torch.zeros(batch, shape["hidden"], dtype=dtype, device=device),
        positions=torch.zeros(batch, dtype=torch.int64, device=device),
        slots=torch.zeros(batch, dtype=torch.int64, device=device),
        ctx_lens=torch.zeros(batch, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        k_cache=torch.randn(cache_shape, generator=gen).to(device=device, dtype=dtype),
        v_cache=torch.randn(cache_shape, generator=gen).to(device=device, dtype=dtype),
        num_splits=num_splits,
        workspace=torch.full((decode_workspace_numel(batch, shape["q_heads"], shape["head_dim"], num_splits),),
                             float("nan"), device=device),
        counters=torch.zeros(decode_counters_numel(batch, shape["kv_heads"]), dtype=torch.int32, device=device),
    )


def set_inputs(layer, state, ctx_lens: list[int], seed: int) -> None:
    """Token ids, residual, and for each row the position ctx_len - 1 and its cache slot."""
    gen = torch.Generator().manual_seed(seed)
    batch, bs = len(ctx_lens), layer.shape["block_size"]
    tables = state.block_tables.cpu()
    positions = torch.tensor(ctx_lens) - 1
    slots = tables[torch.arange(batch), positions // bs].long() * bs + positions % bs
    state.ids.copy_(torch.randint(0, layer.shape["vocab"], (batch,), generator=gen))
    state.residual.copy_(torch.randn(batch, layer.shape["hidden"], generator=gen))
    state.positions.copy_(positions)
    state.slots.copy_(slots)
    state.ctx_lens.copy_(torch.tensor(ctx_lens, dtype=torch.int32))


def layer_step(layer, state, configs: dict | None = None):
    """One decode layer, Triton kernels only. Returns (hidden out, residual out)."""
    configs = configs or {}
    shape = layer.shape
    batch, hq, hkv, d = state.ids.shape[0], shape["q_heads"], shape["kv_heads"], shape["head_dim"]
    h = mods["embedding"].embedding_triton(state.ids, layer.emb)
    x, residual = mods["norm"].add_rms_norm_triton(h, state.residual, layer.norm1, EPS)
    qkv = linear_ops.linear_triton(x, layer.qkv, config=configs.get("qkv"))
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q = mods["rope"].qk_norm_rope_store_kv_triton(
        q.view(batch, hq, d), k.view(batch, hkv, d), v.view(batch, hkv, d), layer.q_norm, layer.k_norm,
        layer.cos_sin, state.positions, state.k_cache, state.v_cache, state.slots, EPS)
    attn = mods["decode_attention"].paged_decode_attention_triton(
        q, state.k_cache, state.v_cache, state.block_tables, state.ctx_lens, d**-0.5,
        workspace=state.workspace, num_splits=state.num_splits, counters=state.counters)
    stream = linear_ops.linear_add_triton(attn.view(batch, hq * d), layer.o, residual, config=configs.get("o"))
    # (gate_up stands for a weight with norm2 folded in: the kernel scales by 1 / rms only.)
    act, _ = linear_ops.rms_norm_linear_triton(stream, layer.norm2, EPS, layer.gate_up, silu_mul=True, norm_folded=True,
                                                   config=configs.get("gate_up"))
    stream = linear_ops.linear_add_triton(act, layer.down, stream.hidden, config=configs.get("down"))
    return mods["norm"].rms_norm_triton(stream.hidden, layer.norm3, EPS), stream.hidden


def snapshot(outputs, state) -> list[torch.Tensor]:
    return [t.clone() for t in (*outputs, state.k_cache, state.v_cache, state.counters)]


def assert_bitwise(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    names = ["out", "residual", "k_cache", "v_cache", "counters"]
    for name, g, w in zip(names, got, want):
        assert torch.equal(g, w), f"{name} differs in {(g != w).sum().item()} elements"


# ------------------------------------------------------------------------------------ the switch
def test_pdl_is_off_on_cpu_and_with_the_env_switch(monkeypatch):
    assert not pdl_enabled(torch.device("cpu"))
    monkeypatch.setenv("EMBER_DISABLE_PDL", "1")
    assert not pdl_enabled(torch.device("cuda", 0))  # decided before any CUDA query


# ------------------------------------------------------------- USE_PDL paths in the interpreter
@pytest.mark.skipif(HAS_CUDA, reason="interpreter test: on a GPU the gdc calls are real (see below)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pdl_code_paths_in_interpreter_are_bitwise_identical(monkeypatch, dtype):
    layer = make_layer(TINY, dtype, "cpu")
    ctx_lens = [5, 17, 1]
    results = {}
    for use_pdl in (False, True):
        syncs, launches, prefetched = [], [], []
        with monkeypatch.context() as m:
            # griddepcontrol and the PTX prefetch do not exist in the interpreter: record the calls.
            m.setattr(dispatch, "gdc_wait", lambda *_, **__: syncs.append("wait"))
            m.setattr(dispatch, "gdc_launch_dependents", lambda *_, **__: syncs.append("launch"))
            m.setattr(mods["skinny_gemm"], "l2_prefetch", lambda ptrs: prefetched.append(ptrs.handle.data.copy()))
            for name, module in mods.items():
                m.setattr(module, "pdl_enabled", lambda device: use_pdl)
                for kernel_name in KERNELS[name]:
                    kernel = getattr(module, kernel_name)

                    def run(*args, _kernel=kernel, _run=kernel.run, _name=kernel_name, **kwargs):
                        assert kwargs["USE_PDL"] is kwargs["launch_pdl"] is use_pdl, _name
                        grid = kwargs["grid"]
                        launches.append((_name, grid[0] * (grid[1] if len(grid) > 1 else 1)
                                         * (grid[2] if len(grid) > 2 else 1), kwargs.get("GATE_SILU", False)))
                        return _run(*args, **kwargs)

                    m.setattr(kernel, "run", run)
            state = make_state(layer, len(ctx_lens), max_ctx=24, num_splits=3)
            set_inputs(layer, state, ctx_lens, seed=7)
            results[use_pdl] = snapshot(layer_step(layer, state, TINY_CONFIGS), state)
        launched = {name for name, _, _ in launches}
        assert launched == {k for names in KERNELS.values() for k in names}
        programs = sum(n for _, n, _ in launches)
        # Every program of every launch: wait, then launch dependents, once each.
        assert syncs == (["wait", "launch"] * programs if use_pdl else [])
        # The skinny GEMM's programs prefetch lines of their weight, and nothing else, before the
        # wait: once, or twice (gate and up rows) with the silu epilogue.
        weights = [layer.qkv, layer.o, layer.gate_up, layer.down]
        expected = sum(n * (2 if silu else 1) for name, n, silu in launches if name == "_skinny_kernel")
        assert len(prefetched) == (expected if use_pdl else 0)
        for addresses in prefetched:
            assert any(((w.data_ptr() <= addresses) & (addresses < w.data_ptr() + w.nbytes)).all() for w in weights)
    assert_bitwise(results[True], results[False])


# ------------------------------------------------------------------------------------------ GPU
def _sm90() -> bool:
    return HAS_CUDA and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="PDL needs an sm_90+ GPU")
def test_gpu_pdl_on_by_default(monkeypatch):
    monkeypatch.delenv("EMBER_DISABLE_PDL", raising=False)
    assert pdl_enabled(torch.device("cuda"))
    monkeypatch.setenv("EMBER_DISABLE_PDL", "1")
    assert not pdl_enabled(torch.device("cuda"))


def _capture(layer, state, monkeypatch, pdl: bool) -> tuple[torch.cuda.CUDAGraph, tuple]:
    with monkeypatch.context() as m:
        if pdl:
            m.delenv("EMBER_DISABLE_PDL", raising=False)
        else:
            m.setenv("EMBER_DISABLE_PDL", "1")
        layer_step(layer, state)  # compile and create the split-K workspace outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = layer_step(layer, state)
    return graph, outputs


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="PDL needs an sm_90+ GPU")
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_gpu_pdl_chain_in_cuda_graph_matches_no_pdl_bitwise(monkeypatch, batch):
    """Graph with PDL, graph without, eager without: same outputs and caches, bit for bit."""
    layer = make_layer(QWEN3_06B, torch.bfloat16, "cuda")
    max_ctx = 600
    states = {v: make_state(layer, batch, max_ctx, None) for v in ("pdl", "no_pdl", "eager")}
    assert states["pdl"].num_splits > 1
    lens0 = [1 + (550 - 37 * i) % 580 for i in range(batch)]  # 1 .. 580, + 5 steps fits in max_ctx
    for state in states.values():
        set_inputs(layer, state, lens0, seed=0)
    graphs = {v: _capture(layer, states[v], monkeypatch, pdl=v == "pdl") for v in ("pdl", "no_pdl")}
    monkeypatch.setenv("EMBER_DISABLE_PDL", "1")
    layer_step(layer, states["eager"])  # the warm-up step the captures ran
    for step in range(1, 6):  # a sequence of decode steps: each writes the cache, then reads it
        lens = [n + step for n in lens0]
        for state in states.values():
            set_inputs(layer, state, lens, seed=step)
        got = {}
        for v, (graph, outputs) in graphs.items():
            graph.replay()
            got[v] = snapshot(outputs, states[v])
        got["eager"] = snapshot(layer_step(layer, states["eager"]), states["eager"])
        torch.cuda.synchronize()
        assert torch.isfinite(got["pdl"][0]).all() and got["pdl"][0].abs().sum() > 0
        assert_bitwise(got["pdl"], got["no_pdl"])
        assert_bitwise(got["pdl"], got["eager"])
        assert (got["pdl"][4] == 0).all()  # the attention counters were reset


@pytest.mark.gpu
@pytest.mark.skipif(not _sm90(), reason="PDL needs an sm_90+ GPU")
def test_gpu_pdl_graph_replays_are_race_free(monkeypatch):
    """Replays alternate two input sets (same slots, different tokens and residuals) back to back:
    a kernel reading an activation, workspace or counter before its predecessor finished would
    now and then see the other set's values. Every replay must equal the first of its set."""
    layer = make_layer(QWEN3_06B, torch.bfloat16, "cuda")
    state = make_state(layer, 4, 600, None)
    lens = [550, 300, 17, 64]
    set_inputs(layer, state, lens, seed=0)
    graph, outputs = _capture(layer, state, monkeypatch, pdl=True)
    inputs = []
    for seed in (1, 2):
        set_inputs(layer, state, lens, seed=seed)
        inputs.append((state.ids.clone(), state.residual.clone()))
    firsts, outs = [], []
    for i in range(200):
        ids, residual = inputs[i % 2]
        state.ids.copy_(ids)
        state.residual.copy_(residual)
        graph.replay()
        (firsts if i < 2 else outs).append([t.clone() for t in outputs])
    torch.cuda.synchronize()
    assert not torch.equal(firsts[0][0], firsts[1][0])
    for i, out in enumerate(outs):
        assert all(torch.equal(a, b) for a, b in zip(out, firsts[i % 2])), f"replay {i + 2} differs"
    assert (state.counters == 0).all()
