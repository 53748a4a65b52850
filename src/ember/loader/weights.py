"""Build a model on its device and fill its weights from a checkpoint or at random.

The model is first built on the meta device (no memory), then allocated uninitialised on the
target device; checkpoint tensors are then streamed one at a time from the mmap'd files into
their parameters, so the host never holds the model twice.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ember.config import ModelConfig
from ember.errors import WeightsError
from ember.loader.checkpoint import CheckpointFiles
from ember.models import MODEL_REGISTRY

# Tensors some checkpoints carry that hold nothing the model needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_model(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> nn.Module:
    with torch.device("meta"):
        model = MODEL_REGISTRY[cfg.architecture](cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.init_rope_cache(device)
    return model.eval()


def _target(model: nn.Module, params: dict, param_name: str, shard: int | None) -> torch.Tensor:
    param = params[param_name]
    if shard is None:
        return param.data
    module = model.get_submodule(param_name.rsplit(".", 1)[0])
    return param.data[module.shard_rows(shard)]


def load_checkpoint_weights(model: nn.Module, folder: str | Path, progress: bool = True) -> None:
    """Copy every tensor of the checkpoint in ``folder`` into ``model``, validating names and shapes."""
    files = CheckpointFiles(folder)
    name_map = model.checkpoint_name_map()
    params = dict(model.named_parameters())
    present = set(files.names())
    tied = getattr(model.config, "tie_word_embeddings", False)

    missing = sorted(set(name_map) - present)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise WeightsError(f"{folder}: checkpoint is missing tensor(s) {', '.join(missing[:3])}{more}")
    for name in sorted(present - set(name_map)):
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        raise WeightsError(f"{files.file_of(name).name}: unexpected tensor {name!r} for {model.config.architecture}")
    for name, path in files.unlisted_tensors():  # in a shard, but the index does not list it there
        raise WeightsError(f"{path.name}: tensor {name!r} is not listed in model.safetensors.index.json")

    bar = tqdm(
        total=sum(files.nbytes(n) for n in name_map), unit="B", unit_scale=True,
        desc="Loading weights", disable=not progress, leave=False,
    )
    with bar:
        for name, tensor, path in files.iter_tensors(names=list(name_map)):
            target = _target(model, params, *name_map[name])
            if tuple(tensor.shape) != tuple(target.shape):
                raise WeightsError(
                    f"{Path(path).name}: tensor {name!r} has shape {list(tensor.shape)}, "
                    f"expected {list(target.shape)}"
                )
            if not tensor.dtype.is_floating_point:
                raise WeightsError(
                    f"{Path(path).name}: tensor {name!r} has dtype {tensor.dtype}; "
                    "quantized checkpoints are not supported yet"
                )
            target.copy_(tensor.to(target.device, non_blocking=False))
            bar.update(tensor.numel() * tensor.element_size())
    _mark_unfolded(model)


def _mark_unfolded(model: nn.Module) -> None:
    """Fresh weights hold the checkpoint's norms: a fold done before (``fold_norms``) no longer holds."""
    for module in model.modules():
        if getattr(module, "folded", False):
            module.folded = False


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights of the real shapes (``--load-format dummy``), never all zeros.

    Linear and embedding weights ~ N(0, 0.02) as Qwen3's initializer_range; norm weights
    ~ N(1, 0.05) so that the norms are not the identity.
    """
    for i, (name, param) in enumerate(model.named_parameters()):
        gen = torch.Generator(device=param.device).manual_seed(seed * 100_003 + i)
        if "norm" in name:
            param.data.normal_(1.0, 0.05, generator=gen)
        else:
            param.data.normal_(0.0, 0.02, generator=gen)
    _mark_unfolded(model)
