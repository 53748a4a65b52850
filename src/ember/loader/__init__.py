"""Locating a model folder and reading its safetensors weights, validating everything read."""

from ember.loader.checkpoint import CheckpointFiles
from ember.loader.model_path import resolve_model_path
from ember.loader.safetensors_file import SafetensorsFile

__all__ = ["CheckpointFiles", "SafetensorsFile", "resolve_model_path"]
