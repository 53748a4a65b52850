"""User-facing errors.

Anything a user can cause (a bad folder, a lying weight file, a prompt too long) raises an
``EmberError`` subclass whose message is one clear sentence; the CLI prints it as one line
and exits non-zero, without a traceback unless ``-v``. Any other exception is a bug.
"""


class EmberError(Exception):
    """Base class of errors that are the input's fault, not Ember's."""


class ModelNotFoundError(EmberError):
    """The model folder or hub id cannot be found or fetched."""


class ConfigError(EmberError):
    """config.json is missing, malformed, or describes an unsupported model."""


class WeightsError(EmberError):
    """A safetensors file is malformed, or tensors are missing, unexpected or mis-shaped."""


class TokenizerError(EmberError):
    """The tokenizer files are missing or malformed, or a chat template failed."""


class ContextLengthError(EmberError):
    """A prompt (plus what it asks to generate) does not fit the context or the KV cache."""


class InvalidRequestError(EmberError):
    """A request's parameters are out of range."""
