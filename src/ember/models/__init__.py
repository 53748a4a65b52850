"""Model architectures Ember runs, keyed by the ``architectures`` name in config.json."""

from ember.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY = {"Qwen3ForCausalLM": Qwen3ForCausalLM}

__all__ = ["MODEL_REGISTRY", "Qwen3ForCausalLM"]
