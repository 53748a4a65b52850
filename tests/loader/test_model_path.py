"""resolve_model_path: local folders, bad paths, and hub ids without any network access."""

import re
import time
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants

from ember.errors import ModelNotFoundError
from ember.loader import resolve_model_path
from ember.loader.model_path import looks_like_hub_id


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; huggingface_hub read HF_HOME at import, so patch it too."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_local_folder(tmp_path, monkeypatch):
    (tmp_path / "qwen").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("qwen") == (tmp_path / "qwen").resolve()
    assert resolve_model_path(str(tmp_path / "qwen")).is_absolute()


def test_local_folder_shaped_like_hub_id_wins(tmp_path, monkeypatch):
    (tmp_path / "Qwen" / "Qwen3-0.6B").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("Qwen/Qwen3-0.6B") == (tmp_path / "Qwen" / "Qwen3-0.6B").resolve()


@pytest.mark.parametrize("name", ["./qwen", "/x/y/z", "qwen", "a/b/c", "../up/model"])
def test_missing_path(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        resolve_model_path(name)


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name(name):
    with pytest.raises(ModelNotFoundError, match="No model given"):
        resolve_model_path(name)


def test_file_is_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="expects a folder"):
        resolve_model_path(str(path))


def test_hub_id_shapes():
    assert looks_like_hub_id("Qwen/Qwen3-0.6B")
    assert looks_like_hub_id("org_1/name.v2")
    for bad in ["qwen", "./qwen", "/x/y", "a/b/c", "a--b/c", "a/b..c", "a/b.git", "-a/b", "a/b c"]:
        assert not looks_like_hub_id(bad), bad


def test_offline_uncached_hub_id(empty_hf_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_path("ember-test/not-a-real-model")
    message = str(info.value)
    assert time.monotonic() - start < 5
    assert "'ember-test/not-a-real-model' is not a local folder" in message
    assert "not in the local Hugging Face cache" in message and "offline" in message.lower()
    assert "local model folder" in message


def test_cached_snapshot_used_offline(empty_hf_cache, monkeypatch, tmp_path):
    snapshot = empty_hf_cache / "hub" / "models--ember-test--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("ember-test/tiny") == snapshot


def hub_error(name):
    """An instance of huggingface_hub's error class ``name``, built without any HTTP traffic."""
    from huggingface_hub import errors

    response = SimpleNamespace(headers={}, request=None, status_code=404, url="https://example.invalid")
    return getattr(errors, name)(f"fake {name}", response=response)


def wrapped_connect_error():
    """A RuntimeError caused by something shaped like httpx's ConnectError (found via the cause chain)."""
    connect_error = type("ConnectError", (Exception,), {"__module__": "httpx"})
    error = RuntimeError("request failed")
    error.__cause__ = connect_error("name resolution failed")
    return error


@pytest.mark.parametrize(
    "error, words",
    [
        (lambda: hub_error("GatedRepoError"), "gated"),
        (lambda: hub_error("RepositoryNotFoundError"), "no such repository"),
        (lambda: hub_error("RevisionNotFoundError"), "no revision 'v9'"),
        (lambda: huggingface_hub.errors.LocalEntryNotFoundError("no network"), "offline?"),
        (lambda: ConnectionError("unreachable"), "offline?"),
        (wrapped_connect_error, "offline?"),
        (lambda: hub_error("HfHubHTTPError"), "failed (fake HfHubHTTPError)"),
    ],
)
def test_hub_errors_are_translated(empty_hf_cache, monkeypatch, tmp_path, error, words):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None, local_files_only=False):
        calls.append(local_files_only)
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise error()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelNotFoundError, match=re.escape(words)):
        resolve_model_path("ember-test/model", revision="v9")
    assert calls == [True, False]  # the cache first, then the network


def test_download_when_cache_incomplete(empty_hf_cache, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    partial, full = tmp_path / "partial", tmp_path / "full"
    partial.mkdir()
    (partial / "config.json").write_text("{}")  # weights never arrived

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None, local_files_only=False):
        assert "*.safetensors" in allow_patterns
        return str(partial if local_files_only else full)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_path("ember-test/model") == full
