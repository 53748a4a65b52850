"""Ember: a small, exact and fast inference engine for Qwen3 models."""

__version__ = "0.1.0"
