"""The real Qwen3 tokenizer files, as Ember and as HF transformers load them."""

from pathlib import Path

import pytest

from ember.tokenizer import Tokenizer

FOLDER = Path(__file__).resolve().parents[1] / "data" / "qwen3-tokenizer"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(FOLDER))
