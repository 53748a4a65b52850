"""Read one .safetensors file, treating its header as untrusted input.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data section that
follows the header), then the raw little-endian tensor bytes.

Models come from the internet, so every field is checked before any data is touched: a lying
header raises ``WeightsError`` naming the file (and tensor), never another exception and never
an allocation sized by a number the file made up.
"""

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ember.errors import WeightsError

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_RANK = 8

# safetensors dtype names -> torch dtypes; newer dtypes only where this torch has them.
_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu", "C64": "complex64",
}
DTYPES: dict[str, torch.dtype] = {
    st: getattr(torch, name) for st, name in _DTYPE_NAMES.items() if hasattr(torch, name)
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives; ``begin``/``end`` are byte offsets into the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def quote_name(name: str) -> str:
    # Names come from the file: escape control characters (one-line messages) and cap the length.
    text = repr(name)
    return text if len(text) <= 120 else text[:100] + "...'"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_duplicate_keys(pairs: list) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {quote_name(key)} appears twice")
        result[key] = value
    return result


class SafetensorsFile:
    """A validated, memory-mapped safetensors file; use as a context manager or call ``close()``.

    ``get`` returns a fresh CPU tensor holding a copy of just that tensor's bytes, so tensors stay
    valid after ``close()`` and the whole file is never read into RAM at once.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._label = self.path.name or str(self.path)
        self._mmap: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as f:
                file_size = os.fstat(f.fileno()).st_size
                header_size = self._read_header_size(f, file_size)
                header_bytes = f.read(header_size)
                if len(header_bytes) != header_size:
                    self._fail(f"the header is cut short ({len(header_bytes)} of {header_size} bytes)")
                self._data_start = 8 + header_size
                self._data_size = file_size - self._data_start
                self.metadata, self._tensors = self._parse_header(header_bytes)
                # Zero-size data is allowed, but mmap refuses an empty mapping: the file is >= 10 bytes.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise WeightsError(f"{self._label}: cannot be read ({e.strerror or e}).") from e

    def _fail(self, what: str, tensor: str | None = None):
        where = f"{self._label}: tensor {quote_name(tensor)}" if tensor is not None else self._label
        raise WeightsError(f"{where}: {what}.")

    def _read_header_size(self, f, file_size: int) -> int:
        if file_size < 8:
            self._fail(f"is {file_size} bytes long, too short to be a safetensors file")
        header_size = int.from_bytes(f.read(8), "little")
        if header_size < 2:
            self._fail(f"claims a header of {header_size} bytes, too short to hold a JSON object")
        if header_size > min(file_size - 8, MAX_HEADER_BYTES):
            self._fail(
                f"claims a header of {header_size} bytes but the file is {file_size} bytes "
                f"(and headers are limited to {MAX_HEADER_BYTES} bytes); it is truncated or not safetensors"
            )
        return header_size

    def _parse_header(self, raw: bytes) -> tuple[dict[str, str], dict[str, TensorInfo]]:
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
        except UnicodeDecodeError:
            self._fail("the header is not valid UTF-8")
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            self._fail(f"the header is not valid JSON ({str(e)[:200]})")
        if not isinstance(header, dict):
            self._fail(f"the header is a JSON {type(header).__name__}, not an object")

        metadata = header.pop("__metadata__", None)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            self._fail("__metadata__ must map strings to strings")

        infos = [self._parse_entry(name, entry) for name, entry in header.items()]
        # Sorting by (begin, end) puts any overlapping neighbours next to each other.
        infos.sort(key=lambda t: (t.begin, t.end))
        for prev, cur in zip(infos, infos[1:]):
            if cur.begin < prev.end:
                self._fail(
                    f"data_offsets [{cur.begin}, {cur.end}] overlap tensor {quote_name(prev.name)} "
                    f"at [{prev.begin}, {prev.end}]",
                    cur.name,
                )
        return metadata, {t.name: t for t in infos}

    def _parse_entry(self, name: str, entry) -> TensorInfo:
        if not isinstance(entry, dict):
            self._fail("its header entry is not a JSON object", name)
        dtype_name = entry.get("dtype")
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            known = ", ".join(DTYPES)
            self._fail(f"dtype {quote_name(str(dtype_name))} is not supported (known: {known})", name)
        dtype = DTYPES[dtype_name]

        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            self._fail(f"shape {str(shape)[:100]} is not a list of non-negative integers", name)
        if len(shape) > MAX_RANK:
            self._fail(f"shape has {len(shape)} dimensions, more than the {MAX_RANK} allowed", name)

        offsets = entry.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            self._fail(f"data_offsets {str(offsets)[:100]} is not a pair of integers [begin, end]", name)
        begin, end = offsets
        if not 0 <= begin <= end:
            self._fail(f"data_offsets [{begin}, {end}] are not 0 <= begin <= end", name)
        if end > self._data_size:
            self._fail(
                f"data_offsets [{begin}, {end}] run past the end of the file "
                f"(the data section holds {self._data_size} bytes)",
                name,
            )
        numel = 1
        for d in shape:
            numel *= d  # Python ints: no overflow, and bounded by the check below
        expected = numel * dtype.itemsize
        if end - begin != expected:
            self._fail(
                f"data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {shape} "
                f"of {dtype_name} needs {expected}",
                name,
            )
        return TensorInfo(name, dtype, tuple(shape), begin, end)

    # -- queries -------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Tensor names in the order their bytes appear in the file."""
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"{self._label} has no tensor {quote_name(name)}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self.info(name).dtype

    def nbytes(self, name: str) -> int:
        return self.info(name).nbytes

    def get(self, name: str) -> torch.Tensor:
        """A new CPU tensor with a copy of ``name``'s bytes (valid after ``close()``)."""
        info = self.info(name)
        if self._mmap is None:
            raise ValueError(f"{self._label} is closed")
        raw = torch.empty(info.nbytes, dtype=torch.uint8)
        if info.nbytes:
            # numpy reads the read-only mapping without copying; the only copy lands in `raw`.
            src = np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes,
                                offset=self._data_start + info.begin)
            raw.numpy()[:] = src
            del src  # release the buffer export so close() can unmap
        return raw.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # _mmap is missing when __init__ failed early.
        if getattr(self, "_mmap", None) is not None:
            self.close()
