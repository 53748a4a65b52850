"""Find a model folder's safetensors files and stream their tensors one at a time.

A checkpoint is ``model.safetensors``, or shards listed by ``model.safetensors.index.json``
(its "weight_map" maps tensor name -> shard file name), or, when neither exists, every
``*.safetensors`` file in the folder. All headers are parsed and validated up front (cheap: no
tensor data is read), so a broken shard fails before a long load starts rather than halfway.
"""

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ember.errors import ModelNotFoundError, WeightsError
from ember.loader.safetensors_file import SafetensorsFile, TensorInfo, quote_name

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Formats we recognise only to say they are unsupported.
UNSUPPORTED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf")


def _is_plain_file_name(name: str) -> bool:
    # An index from the internet must not point outside the folder ("../x", "/etc/passwd").
    return (
        name not in ("", ".", "..")
        and not any(c in name for c in ("/", "\\", "\0"))
        and not os.path.isabs(name)
    )


class CheckpointFiles:
    """The tensors of the checkpoint in ``folder``: names, shapes, dtypes, and a streaming reader."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ModelNotFoundError(f"'{self.folder}' is not a folder.")
        self._where: dict[str, tuple[Path, TensorInfo]] = {}  # name -> (file, info), in file order
        self._unlisted: list[tuple[str, Path]] = []

        single, index = self.folder / SINGLE_FILE, self.folder / INDEX_FILE
        if single.is_file():
            weight_map = None
            files = [single]
        elif index.is_file():
            weight_map = self._read_index(index)
            files = [self.folder / name for name in sorted(set(weight_map.values()))]
        else:
            weight_map = None
            files = sorted(p for p in self.folder.glob("*.safetensors") if p.is_file())
        if not files:
            raise WeightsError(self._no_weights_message())

        for path in files:
            with SafetensorsFile(path) as sf:
                for name in sf.keys():
                    self._add(name, path, sf.info(name), weight_map)
        if weight_map is not None:
            for name, file_name in weight_map.items():
                if name not in self._where:
                    raise WeightsError(
                        f"{INDEX_FILE}: tensor {quote_name(name)} is listed in {file_name}, "
                        f"but that file does not contain it."
                    )

    def _add(self, name: str, path: Path, info: TensorInfo, weight_map: dict[str, str] | None):
        if weight_map is not None and weight_map.get(name) != path.name:
            # Present in the shard but not assigned to it by the index: let the model loader decide.
            self._unlisted.append((name, path))
            return
        if name in self._where:
            other = self._where[name][0].name
            raise WeightsError(f"{path.name}: tensor {quote_name(name)} is also in {other}.")
        self._where[name] = (path, info)

    def _read_index(self, index: Path) -> dict[str, str]:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except OSError as e:
            raise WeightsError(f"{INDEX_FILE}: cannot be read ({e.strerror or e}).") from e
        except (ValueError, RecursionError) as e:  # also UnicodeDecodeError
            raise WeightsError(f"{INDEX_FILE}: is not valid UTF-8 JSON ({str(e)[:200]}).") from e
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{INDEX_FILE}: has no \"weight_map\" object mapping tensor names to files.")
        for name, file_name in weight_map.items():
            if not isinstance(file_name, str):
                raise WeightsError(f"{INDEX_FILE}: tensor {quote_name(name)} maps to a non-string file name.")
            if not _is_plain_file_name(file_name) or not file_name.endswith(".safetensors"):
                raise WeightsError(
                    f"{INDEX_FILE}: tensor {quote_name(name)} maps to {quote_name(file_name)}, "
                    f"which is not a plain .safetensors file name inside the folder."
                )
        for file_name in sorted(set(weight_map.values())):
            if not (self.folder / file_name).is_file():
                raise WeightsError(f"{INDEX_FILE}: lists {quote_name(file_name)}, which is missing from the folder.")
        return weight_map

    def _no_weights_message(self) -> str:
        others = sorted(p.name for p in self.folder.iterdir() if p.suffix in UNSUPPORTED_SUFFIXES)
        if others:
            found = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            return (
                f"'{self.folder}' has no .safetensors weights, only {found}; "
                f".bin/.pt checkpoints are not supported, so convert them to safetensors."
            )
        return f"'{self.folder}' has no .safetensors weights."

    # -- queries -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """All tensor names, file by file, in the order their bytes appear."""
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def unlisted_tensors(self) -> list[tuple[str, Path]]:
        """(name, file) of tensors a shard holds but the index does not assign to it."""
        return list(self._unlisted)

    def file_of(self, name: str) -> Path:
        return self._where[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][1].shape

    def dtype(self, name: str) -> torch.dtype:
        return self._where[name][1].dtype

    def nbytes(self, name: str) -> int:
        return self._where[name][1].nbytes

    def total_bytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes of tensor data to read (for progress bars)."""
        wanted = self._where if names is None else names
        return sum(self._where[n][1].nbytes for n in wanted)

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor, Path]]:
        """Yield (name, CPU tensor, file) for ``names`` (default: all), file by file, one at a time.

        Order is the checkpoint's (file, then offset), not that of ``names``, so each file is
        opened once and read front to back. Each tensor is a fresh copy owned by the caller.
        """
        wanted = set(self._where) if names is None else set(names)
        for name in wanted:
            if name not in self._where:
                raise WeightsError(f"The checkpoint in '{self.folder}' has no tensor {quote_name(name)}.")
        by_file: dict[Path, list[str]] = {}
        for name, (path, _) in self._where.items():
            if name in wanted:
                by_file.setdefault(path, []).append(name)
        for path, file_names in by_file.items():
            with SafetensorsFile(path) as sf:
                for name in file_names:
                    if name not in sf or sf.info(name) != self._where[name][1]:
                        raise WeightsError(f"{path.name}: changed while it was being loaded.")
                    yield name, sf.get(name), path
