"""CheckpointFiles: single-file, sharded and loose checkpoints; hostile or inconsistent indexes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ember.errors import ModelNotFoundError, WeightsError
from ember.loader import CheckpointFiles

SHARDS = {
    "model-00001-of-00002.safetensors": {
        "embed": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "norm": torch.ones(4, dtype=torch.bfloat16),
    },
    "model-00002-of-00002.safetensors": {
        "lm_head": torch.arange(8, dtype=torch.float16).reshape(2, 4),
        "empty": torch.zeros(0, dtype=torch.int32),
    },
}


def write_sharded(folder, shards=SHARDS, weight_map=None):
    for file_name, tensors in shards.items():
        save_file(tensors, folder / file_name)
    if weight_map is None:
        weight_map = {name: file_name for file_name, tensors in shards.items() for name in tensors}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return folder


def test_single_file(tmp_path):
    tensors = {"a": torch.randn(2, 3), "b": torch.tensor(1.0)}
    save_file(tensors, tmp_path / "model.safetensors")
    ckpt = CheckpointFiles(tmp_path)
    assert sorted(ckpt.names()) == ["a", "b"]
    assert ckpt.file_of("a") == tmp_path / "model.safetensors"
    assert ckpt.shape("a") == (2, 3) and ckpt.dtype("b") == torch.float32
    got = {name: t for name, t, _ in ckpt.iter_tensors()}
    assert all(torch.equal(got[n], tensors[n]) for n in tensors)


def test_sharded_read_back(tmp_path):
    ckpt = CheckpointFiles(write_sharded(tmp_path))
    everything = {n: t for tensors in SHARDS.values() for n, t in tensors.items()}
    assert set(ckpt.names()) == set(everything)
    assert ckpt.unlisted_tensors() == []
    assert ckpt.total_bytes() == sum(t.numel() * t.element_size() for t in everything.values())
    assert ckpt.total_bytes(["norm"]) == ckpt.nbytes("norm") == 8
    files_seen = []
    for name, tensor, path in ckpt.iter_tensors():
        assert path == ckpt.file_of(name) and path.name in SHARDS
        assert tensor.dtype == everything[name].dtype and torch.equal(tensor, everything[name])
        files_seen.append(path.name)
    # Streamed file by file: each shard's tensors are contiguous in the stream.
    assert files_seen == sorted(files_seen)


def test_iter_subset_and_unknown_name(tmp_path):
    ckpt = CheckpointFiles(write_sharded(tmp_path))
    assert [n for n, _, _ in ckpt.iter_tensors(["lm_head", "embed"])] == ["embed", "lm_head"]
    with pytest.raises(WeightsError, match="'missing'"):
        list(ckpt.iter_tensors(["embed", "missing"]))


def test_single_file_wins_over_index(tmp_path):
    write_sharded(tmp_path)
    save_file({"only": torch.zeros(1)}, tmp_path / "model.safetensors")
    assert CheckpointFiles(tmp_path).names() == ["only"]


def test_loose_files_without_index(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "part-b.safetensors")
    save_file({"b": torch.zeros(1)}, tmp_path / "part-a.safetensors")
    assert CheckpointFiles(tmp_path).names() == ["b", "a"]


def test_loose_files_with_duplicate_tensor(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "x.safetensors")
    save_file({"a": torch.zeros(1)}, tmp_path / "y.safetensors")
    with pytest.raises(WeightsError, match=r"y\.safetensors: tensor 'a' is also in x\.safetensors"):
        CheckpointFiles(tmp_path)


def test_index_names_missing_file(tmp_path):
    weight_map = {"embed": "model-00001-of-00002.safetensors", "lm_head": "model-00003.safetensors"}
    write_sharded(tmp_path, {"model-00001-of-00002.safetensors": SHARDS["model-00001-of-00002.safetensors"]}, weight_map)
    with pytest.raises(WeightsError, match=r"index\.json: lists 'model-00003\.safetensors', which is missing"):
        CheckpointFiles(tmp_path)


@pytest.mark.parametrize(
    "file_name", ["../x.safetensors", "/etc/passwd", "sub/x.safetensors", "..", "", "x.bin", "a\\b.safetensors"]
)
def test_index_path_traversal_is_rejected(tmp_path, file_name):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"embed": torch.zeros(1)}, tmp_path / "x.safetensors")  # bait outside the folder
    write_sharded(folder, {}, {"embed": file_name})
    with pytest.raises(WeightsError, match="not a plain .safetensors file name"):
        CheckpointFiles(folder)


def test_index_lists_tensor_the_file_lacks(tmp_path):
    weight_map = {"embed": "model-00001-of-00002.safetensors", "ghost": "model-00001-of-00002.safetensors"}
    write_sharded(tmp_path, {"model-00001-of-00002.safetensors": SHARDS["model-00001-of-00002.safetensors"]}, weight_map)
    with pytest.raises(WeightsError, match=r"tensor 'ghost' is listed in model-00001-of-00002\.safetensors"):
        CheckpointFiles(tmp_path)


def test_unlisted_tensor_is_reported(tmp_path):
    weight_map = {"embed": "model-00001-of-00002.safetensors"}
    write_sharded(tmp_path, {"model-00001-of-00002.safetensors": SHARDS["model-00001-of-00002.safetensors"]}, weight_map)
    ckpt = CheckpointFiles(tmp_path)
    assert ckpt.names() == ["embed"]
    assert ckpt.unlisted_tensors() == [("norm", tmp_path / "model-00001-of-00002.safetensors")]


@pytest.mark.parametrize(
    "index_text", ["not json", "[]", '{"weight_map": []}', '{"weight_map": {}}', '{"weight_map": {"a": 3}}']
)
def test_malformed_index(tmp_path, index_text):
    (tmp_path / "model.safetensors.index.json").write_text(index_text)
    with pytest.raises(WeightsError, match=r"^model\.safetensors\.index\.json: "):
        CheckpointFiles(tmp_path)


def test_broken_shard_names_the_file(tmp_path):
    write_sharded(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(WeightsError, match=r"^model-00002-of-00002\.safetensors: "):
        CheckpointFiles(tmp_path)


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="has no .safetensors weights"):
        CheckpointFiles(tmp_path)


def test_bin_only_says_unsupported(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x00")
    with pytest.raises(WeightsError, match=r"pytorch_model\.bin.*not supported"):
        CheckpointFiles(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError):
        CheckpointFiles(tmp_path / "nope")
