"""Ember: a small, exact and fast inference engine for Qwen3 models."""

from ember.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name):
    # LLM pulls in torch and the model; import it only when asked for.
    if name == "LLM":
        from ember.entrypoints.llm import LLM

        return LLM
    raise AttributeError(name)
