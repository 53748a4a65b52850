"""Text in and out of the model: tokenizer, chat template and streaming detokenizer."""

from ember.tokenizer.chat_template import ChatTemplate
from ember.tokenizer.detokenizer import IncrementalDetokenizer
from ember.tokenizer.tokenizer import Tokenizer

__all__ = ["ChatTemplate", "IncrementalDetokenizer", "Tokenizer"]
