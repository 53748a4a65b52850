"""Turn what the user typed (a folder or a Hugging Face hub id) into a local model folder.

huggingface_hub is imported lazily (it is slow to import and only hub ids need it), and its
exception classes are looked up by name because they moved between modules across versions
(0.x raises requests errors, 1.x httpx, 2.x httpx2).
"""

import os
import re
from pathlib import Path

from ember.errors import ModelNotFoundError

# What a model folder needs: config and weights, tokenizer files, chat templates.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]

# org/name as the Hub accepts them: word characters, "-", "."; no "--" or ".."; <= 96 each.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def looks_like_hub_id(text: str) -> bool:
    return (
        _HUB_ID.fullmatch(text) is not None
        and "--" not in text
        and ".." not in text
        and not text.endswith(".git")
    )


def resolve_model_path(name_or_path: str, revision: str | None = None) -> Path:
    """An existing local folder as is (resolved), else a hub id's snapshot folder in the HF cache.

    A cached snapshot is used without touching the network; otherwise it is downloaded (with
    tqdm progress bars). ``revision`` (branch, tag or commit) only applies to hub ids.
    """
    if not name_or_path or not name_or_path.strip():
        raise ModelNotFoundError("No model given: pass a model folder or a Hugging Face hub id.")
    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir():
            return path.resolve()
        is_file = path.exists()
    except OSError as e:
        raise ModelNotFoundError(f"'{name_or_path}' cannot be accessed ({e.strerror or e}).") from e
    if is_file:
        raise ModelNotFoundError(
            f"'{name_or_path}' is a file, but Ember expects a folder holding config.json and .safetensors weights."
        )
    if not looks_like_hub_id(name_or_path):
        raise ModelNotFoundError(
            f"'{name_or_path}': no such folder, and not a Hugging Face hub id of the form org/name."
        )
    return _snapshot(name_or_path, revision)


def _offline() -> bool:
    # Read the environment now, not when huggingface_hub was imported, then its own view.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _looks_complete(folder: Path) -> bool:
    """Whether a cached snapshot has config and weights (an interrupted download may not)."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file() and not (folder / "model.safetensors").is_file():
        import json

        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            return all((folder / str(s)).is_file() for s in shards)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return True  # malformed: let the checkpoint loader explain what is wrong
    return any(folder.glob("*.safetensors"))


def _snapshot(repo_id: str, revision: str | None) -> Path:
    import huggingface_hub

    offline = _offline()
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=True
        )
        if offline or _looks_complete(Path(folder)):
            return Path(folder)
    except (OSError, ValueError) as e:  # not cached, or cached only in part
        if offline:
            raise ModelNotFoundError(_not_downloadable(repo_id, "HF_HUB_OFFLINE is set")) from e
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS
        )
    except Exception as e:
        raise _translate_hub_error(e, repo_id, revision) from e
    return Path(folder)


def _not_downloadable(repo_id: str, why: str) -> str:
    return (
        f"'{repo_id}' is not a local folder, is not in the local Hugging Face cache, and could not "
        f"be downloaded ({why}); pass the path of a local model folder instead."
    )


def _hub_error_class(name: str) -> type:
    # huggingface_hub.errors exists since 0.23; older releases kept these in huggingface_hub.utils.
    for module in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            cls = getattr(__import__(module, fromlist=[name]), name, None)
        except ImportError:
            continue
        if isinstance(cls, type):
            return cls
    return type(f"_Missing{name}", (Exception,), {})  # never raised, so never matches


def _is_connection_error(e: BaseException) -> bool:
    """True for "the Hub could not be reached", whichever HTTP library raised it."""
    seen = set()
    error: BaseException | None = e
    while error is not None and id(error) not in seen:  # the cause chain, guarding against cycles
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        for cls in type(error).__mro__:
            library = cls.__module__.split(".")[0]
            if library in ("requests", "httpx", "httpx2", "urllib3", "httpcore") and (
                any(word in cls.__name__ for word in ("Connect", "Timeout", "Proxy"))
            ):
                return True
        error = error.__cause__ or error.__context__
    return False


def _translate_hub_error(e: Exception, repo_id: str, revision: str | None) -> Exception:
    """The ModelNotFoundError to raise for ``e``, or ``e`` itself when it is not the input's fault."""
    hub = f"'{repo_id}' is not a local folder and"
    if isinstance(e, _hub_error_class("GatedRepoError")):  # a subclass of RepositoryNotFoundError
        return ModelNotFoundError(
            f"{hub} is a gated repository on the Hugging Face Hub: accept its terms on the Hub, "
            f"then log in (`hf auth login` or HF_TOKEN)."
        )
    if isinstance(e, _hub_error_class("RepositoryNotFoundError")):
        return ModelNotFoundError(
            f"{hub} no such repository exists on the Hugging Face Hub (or it is private and you are not logged in)."
        )
    if isinstance(e, _hub_error_class("RevisionNotFoundError")):
        return ModelNotFoundError(f"{hub} its Hugging Face Hub repository has no revision '{revision}'.")
    if isinstance(e, _hub_error_class("DisabledRepoError")):
        return ModelNotFoundError(f"{hub} its Hugging Face Hub repository has been disabled.")
    if isinstance(e, (_hub_error_class("LocalEntryNotFoundError"), _hub_error_class("OfflineModeIsEnabled"))) or (
        _is_connection_error(e)
    ):
        return ModelNotFoundError(_not_downloadable(repo_id, "the Hub could not be reached; offline?"))
    if isinstance(e, OSError):  # other HTTP errors (401, 5xx: HfHubHTTPError is an OSError), disk full
        detail = (str(e).splitlines() or [type(e).__name__])[0][:200]
        return ModelNotFoundError(f"{hub} downloading it from the Hugging Face Hub failed ({detail}).")
    if isinstance(e, _hub_error_class("HFValidationError")):
        return ModelNotFoundError(f"'{repo_id}' is not a local folder nor a valid Hugging Face repository id.")
    return e
