"""Tokenizer: loading a folder, and encode/decode equal to transformers' AutoTokenizer for Qwen3."""

import json
import random
from pathlib import Path

import pytest

from ember.errors import TokenizerError
from ember.tokenizer import Tokenizer

FOLDER = Path(__file__).resolve().parents[1] / "data" / "qwen3-tokenizer"

TEXTS = [
    "",
    "Hello, my name is",
    "Ça va? Où est la bibliothèque? Größe, ñandú, Ægir, Dvořák, naïve café",
    "Привет, как дела? Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε· ἐν ἀρχῇ ἦν ὁ λόγος",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם, מה שלומך?",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "你好，世界！我们今天学习机器学习和自然语言处理。",
    "こんにちは世界。カタカナとひらがなと漢字。",
    "안녕하세요 세계, 한국어 텍스트입니다.",
    "emoji 😀😃😄 👍🏽 ❤️ 🎉",
    "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏿‍💻",
    "flags 🇫🇷🇩🇪🇯🇵🇺🇸",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    '{"name": "get_weather", "arguments": {"city": "Zürich", "unit": null, "n": [1.5e-3, true]}}',
    "<!DOCTYPE html><html><body class=\"x\"><p>Hi &amp; bye</p></body></html>",
    "   leading spaces and    runs     of spaces   ",
    "\ttabs\t\tand\nnewlines\n\n\nand \r\n windows \r\n\r\n line ends",
    "numbers 1234567890 3.14159 -42 1,000,000 0x1F 2024-05-17",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning here\n</think>\n\nanswer",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call><|endoftext|>",
    "fake <|im_start and <think extra> tokens",
    "combining e\u0301 vs é, Å vs A\u030a, ﬁ ligature, full-width ＡＢＣ",
    "zero\u200bwidth and non\u00a0breaking and \u2028 separators",
    "mixed 中文 English العربية 日本語 한국어 🚀 end",
    "a" * 300 + " " + "🙂" * 40,
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_match_transformers(tok, hf, text):
    ids = tok.encode(text)
    assert ids == hf.encode(text)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_decode_of_arbitrary_ids_matches_transformers(tok, hf):
    # Random ids split characters and mix in special tokens: the lossy decode must agree too.
    rng = random.Random(0)
    pool = list(range(0, 300)) + list(range(151640, 151669)) + [rng.randrange(151643) for _ in range(300)]
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randrange(1, 12))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_special_tokens_and_vocabulary(tok, hf):
    assert tok.encode("Hello, my name is") == [9707, 11, 847, 829, 374]
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645) == (hf.eos_token, hf.eos_token_id)
    assert tok.pad_token_id == hf.pad_token_id == 151643
    assert tok.bos_token_id is None and hf.bos_token_id is None
    assert tok.vocab_size == len(hf) == 151669
    assert tok.special_token_ids == set(hf.all_special_ids)
    assert tok.token_to_id("<think>") == 151667 and tok.id_to_token(151667) == "<think>"
    assert tok.id_to_token(9707) == hf.convert_ids_to_tokens(9707) == "Hello"
    assert tok.token_to_id("no such token") is None
    assert tok.decode([9707, 160000]) == "Hello"  # padding rows of the embedding decode to nothing


def copy_folder(tmp_path: Path, config=None, extra=None) -> Path:
    """A tokenizer folder in tmp_path; ``config`` edits tokenizer_config.json, ``extra`` adds files."""
    folder = tmp_path / "tok"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").symlink_to(FOLDER / "tokenizer.json")
    data = json.loads((FOLDER / "tokenizer_config.json").read_text())
    if config is not None:
        data = config(data) or data
    (folder / "tokenizer_config.json").write_text(json.dumps(data))
    for name, text in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_missing_or_malformed_files_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    folder = copy_folder(tmp_path)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_pretrained(folder)


def test_malformed_config_values(tmp_path):
    def unknown_eos(c):
        c["eos_token"] = "<|nope|>"

    with pytest.raises(TokenizerError, match="eos_token"):
        Tokenizer.from_pretrained(copy_folder(tmp_path / "a", unknown_eos))

    def wrong_id(c):
        c["added_tokens_decoder"]["151667"]["content"] = "</think>"

    with pytest.raises(TokenizerError, match="151667"):
        Tokenizer.from_pretrained(copy_folder(tmp_path / "b", wrong_id))


def test_special_tokens_as_dicts_and_extra_added_tokens(tmp_path):
    def edit(c):
        c["eos_token"] = {"content": "<|endoftext|>", "special": True}
        c["bos_token"] = {"content": "<|im_start|>"}
        c["added_tokens_decoder"]["151669"] = {"content": "<|extra|>", "special": True}

    tok = Tokenizer.from_pretrained(copy_folder(tmp_path, edit))
    assert (tok.eos_token_id, tok.bos_token_id) == (151643, 151644)
    assert tok.encode("a<|extra|>") == [64, 151669]
    assert 151669 in tok.special_token_ids and tok.vocab_size == 151670


def test_chat_template_sources(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]

    def named(c):
        c["chat_template"] = [{"name": "tool_use", "template": "T{{ tools|length }}"},
                              {"name": "default", "template": "D{{ messages[0].content }}"}]

    tok = Tokenizer.from_pretrained(copy_folder(tmp_path / "a", named))
    assert tok.apply_chat_template(msgs) == "Dhi"
    assert tok.apply_chat_template(msgs, tools=[{"type": "function"}]) == "T1"

    # A chat_template.jinja beside the config wins, as in transformers.
    tok = Tokenizer.from_pretrained(copy_folder(tmp_path / "b", extra={"chat_template.jinja": "J{{ eos_token }}"}))
    assert tok.apply_chat_template(msgs) == "J<|im_end|>"

    def none(c):
        del c["chat_template"]

    tok = Tokenizer.from_pretrained(copy_folder(tmp_path / "c", none))
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template(msgs)

    def bad(c):
        c["chat_template"] = 5

    with pytest.raises(TokenizerError, match="chat_template"):
        Tokenizer.from_pretrained(copy_folder(tmp_path / "d", bad))
