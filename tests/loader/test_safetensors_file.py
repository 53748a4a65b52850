"""SafetensorsFile: real files read back bit-exactly; forged headers rejected with WeightsError."""

import json
import random
import struct

import pytest
import torch
from safetensors.torch import save_file

from ember.errors import WeightsError
from ember.loader import SafetensorsFile


def forge(path, header, data=b"", header_size=None):
    """Write a safetensors file by hand: u64 header length, header bytes, data bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(raw) if header_size is None else header_size
    path.write_bytes(struct.pack("<Q", size) + raw + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def raw_bytes(t):
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.tensor([-(2**62), 7]),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "u16": torch.tensor([0, 65535], dtype=torch.uint16),
        "bool": torch.tensor([True, False, True]),
        "f8": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(5, generator=g).to(torch.float8_e5m2),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "empty_bf16": torch.zeros(3, 0, dtype=torch.bfloat16),
    }


def test_round_trip_is_bit_exact(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    with SafetensorsFile(path) as sf:
        assert sorted(sf.keys()) == sorted(tensors)
        assert sf.metadata == {"format": "pt"}
        loaded = {name: sf.get(name) for name in sf.keys()}
        for name, want in tensors.items():
            assert sf.shape(name) == tuple(want.shape)
            assert sf.dtype(name) == want.dtype
            assert sf.nbytes(name) == want.numel() * want.element_size()
    # Tensors are copies: still valid after close.
    for name, want in tensors.items():
        got = loaded[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert raw_bytes(got) == raw_bytes(want), name


def test_keys_in_offset_order(tmp_path):
    header = {"b": entry(offsets=(8, 16)), "a": entry(offsets=(0, 8)), "__metadata__": {"k": "v"}}
    path = forge(tmp_path / "m.safetensors", header, bytes(range(16)))
    with SafetensorsFile(path) as sf:
        assert sf.keys() == ["a", "b"]
        assert "a" in sf and "__metadata__" not in sf
        assert sf.get("b").view(torch.uint8).tolist() == list(range(8, 16))


def test_get_after_close_and_unknown_name(tmp_path):
    path = forge(tmp_path / "m.safetensors", {"a": entry()}, bytes(8))
    sf = SafetensorsFile(path)
    with pytest.raises(KeyError):
        sf.get("nope")
    sf.close()
    sf.close()  # idempotent
    with pytest.raises(ValueError):
        sf.get("a")


def test_missing_file_is_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="nope.safetensors"):
        SafetensorsFile(tmp_path / "nope.safetensors")


BAD_FILES = {
    # name: (header, data, header_size override, words the message must contain)
    "not_json": (b"{not json}", b"", None, "not valid JSON"),
    "not_utf8": (b'{"\xff": 1}', b"", None, "UTF-8"),
    "not_object": (b"[1, 2, 3]", b"", None, "not an object"),
    "deep_nesting": (b"[" * 100_000 + b"]" * 100_000, b"", None, "JSON"),
    "duplicate_key": (b'{"a": {}, "a": {}}', b"", None, "twice"),
    "header_past_end": (b"{}", b"", 1000, "header of 1000 bytes"),
    "header_huge": (b"{}", b"", 2**63, "header of"),
    "header_too_small": (b"{}", b"", 1, "header of 1 bytes"),
    "unknown_dtype": ({"x": entry(dtype="F7")}, bytes(8), None, "'F7'"),
    "dtype_not_string": ({"x": entry(dtype=["F32"])}, bytes(8), None, "tensor 'x'"),
    "negative_shape": ({"x": entry(shape=(-2,))}, bytes(8), None, "tensor 'x'"),
    "float_shape": ({"x": entry(shape=(2.0,))}, bytes(8), None, "tensor 'x'"),
    "bool_shape": ({"x": entry(shape=(True, 2))}, bytes(8), None, "tensor 'x'"),
    "shape_not_list": ({"x": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8), None, "shape"),
    "rank_too_high": ({"x": entry(shape=(1,) * 9, offsets=(0, 4))}, bytes(4), None, "dimensions"),
    "offsets_past_end": ({"x": entry(offsets=(0, 8))}, bytes(4), None, "run past the end"),
    "offsets_huge": ({"x": entry(shape=(2**61,), offsets=(0, 2**63))}, bytes(8), None, "run past the end"),
    "begin_after_end": ({"x": entry(offsets=(8, 0))}, bytes(8), None, "begin <= end"),
    "negative_begin": ({"x": entry(offsets=(-8, 0))}, bytes(8), None, "begin <= end"),
    "size_mismatch": ({"x": entry(shape=(3,), offsets=(0, 8))}, bytes(12), None, "needs 12"),
    "offsets_not_pair": ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), None, "pair"),
    "missing_offsets": ({"x": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "data_offsets"),
    "entry_not_object": ({"x": [1, 2]}, bytes(8), None, "tensor 'x'"),
    "overlap": ({"x": entry(offsets=(0, 8)), "y": entry(offsets=(4, 12))}, bytes(12), None, "overlap"),
    "empty_inside": ({"x": entry(offsets=(0, 8)), "y": entry(shape=(0,), offsets=(4, 4))}, bytes(8), None, "overlap"),
    "metadata_not_dict": ({"__metadata__": ["a"]}, b"", None, "__metadata__"),
    "metadata_not_str": ({"__metadata__": {"a": 1}}, b"", None, "__metadata__"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_forged_header_is_rejected(tmp_path, case):
    header, data, header_size, words = BAD_FILES[case]
    path = forge(tmp_path / "model-00001.safetensors", header, data, header_size)
    with pytest.raises(WeightsError) as info:
        SafetensorsFile(path)
    message = str(info.value)
    assert message.startswith("model-00001.safetensors:")
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize("content", [b"", b"\x02\x00\x00", b"\x02\x00\x00\x00\x00\x00\x00\x00{"])
def test_truncated_file_is_rejected(tmp_path, content):
    path = tmp_path / "short.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="short.safetensors"):
        SafetensorsFile(path)


def test_message_escapes_hostile_tensor_names(tmp_path):
    name = "evil\nname" + "x" * 10_000
    path = forge(tmp_path / "m.safetensors", {name: entry(dtype="NOPE")}, bytes(8))
    with pytest.raises(WeightsError) as info:
        SafetensorsFile(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 600


def test_fuzzed_files_raise_only_weights_error(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(sample_tensors(), good)
    original = good.read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    rng = random.Random(1234)
    path = tmp_path / "fuzz.safetensors"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        data = bytearray(original)
        mode = rng.random()
        if mode < 0.5:  # flip bytes, mostly in the header where they matter
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(min(len(data), header_end + 16))] = rng.randrange(256)
        elif mode < 0.8:
            del data[rng.randrange(len(data)):]
        else:  # replace a digit so offsets and shapes lie
            digits = [i for i in range(8, header_end) if chr(data[i]).isdigit()]
            data[rng.choice(digits)] = ord(rng.choice("0123456789"))
        path.write_bytes(bytes(data))
        try:
            with SafetensorsFile(path) as sf:
                for name in sf.keys():
                    tensor = sf.get(name)
                    assert tensor.shape == sf.shape(name)
            outcomes["ok"] += 1
        except WeightsError as e:
            assert str(e).startswith("fuzz.safetensors")
            outcomes["error"] += 1
    assert outcomes["ok"] > 10 and outcomes["error"] > 100, outcomes
