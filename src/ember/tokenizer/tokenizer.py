"""The model's tokenizer: tokenizer.json through the fast `tokenizers` library, plus what
tokenizer_config.json adds (special tokens, chat template), matching transformers' AutoTokenizer."""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers

from ember.errors import TokenizerError
from ember.tokenizer.byte_pieces import byte_pieces
from ember.tokenizer.chat_template import ChatTemplate

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Newer Hugging Face folders keep templates in their own files; these win over the config's.
TEMPLATE_FILE = "chat_template.jinja"
EXTRA_TEMPLATES_DIR = "additional_chat_templates"
# Byte tables (see byte_pieces.py) by a digest of the two files they come from: a process that loads
# one tokenizer many times (the tests build an engine per test) builds its table once.
_BYTE_PIECES_BY_FILES: dict[bytes, list[bytes] | None] = {}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise TokenizerError(f"{path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}.") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object.")
    return data


def _token_content(value: Any, name: str, path: Path) -> str | None:
    """A special token as written in tokenizer_config.json: a string, {"content": ...} or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{path} has a {name} that is neither a string nor a {{'content': ...}} dict.")


def _read_templates(folder: Path, config: dict, config_path: Path) -> dict[str, str]:
    """Every named chat template of the folder; the unnamed one is called "default"."""
    templates: dict[str, str] = {}
    raw = config.get("chat_template")
    if isinstance(raw, str):
        templates["default"] = raw
    elif isinstance(raw, list):
        for entry in raw:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise TokenizerError(f"{config_path} has a chat_template list entry without a name and a template.")
            templates[entry["name"]] = entry["template"]
    elif raw is not None:
        raise TokenizerError(f"{config_path} has a chat_template that is neither a string nor a list.")
    files = [(folder / TEMPLATE_FILE, "default")]
    extra_dir = folder / EXTRA_TEMPLATES_DIR
    if extra_dir.is_dir():
        files += [(p, p.stem) for p in sorted(extra_dir.glob("*.jinja"))]
    for path, name in files:
        if path.is_file():
            try:
                templates[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise TokenizerError(f"{path} cannot be read: {e}.") from None
    return templates


class Tokenizer:
    """Encode, decode and chat-format text exactly as transformers does for the same folder."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        eos_token: str | None = None,
        pad_token: str | None = None,
        bos_token: str | None = None,
        chat_templates: dict[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self.eos_token, self.pad_token, self.bos_token = eos_token, pad_token, bos_token
        self.eos_token_id = self._special_id(eos_token, "eos_token")
        self.pad_token_id = self._special_id(pad_token, "pad_token")
        self.bos_token_id = self._special_id(bos_token, "bos_token")
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        # Exactly the ids that decode(skip_special_tokens=True) drops.
        self.special_token_ids = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        self.chat_templates = dict(chat_templates or {})
        self._compiled: dict[str, ChatTemplate] = {}
        self._byte_pieces: dict[bool, list[bytes] | None] = {}
        self._files_digest: bytes | None = None  # set by from_pretrained

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Tokenizer":
        folder = Path(folder)
        tokenizer_path, config_path = folder / TOKENIZER_FILE, folder / CONFIG_FILE
        if not tokenizer_path.is_file():
            raise TokenizerError(f"{tokenizer_path} does not exist.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:  # the Rust side raises a bare Exception for any malformed file
            raise TokenizerError(f"{tokenizer_path} is not a valid tokenizers file: {e}.") from None
        config = _read_json(config_path)
        cls._check_added_tokens(backend, config.get("added_tokens_decoder"), config_path)
        tokens = {name: _token_content(config.get(name), name, config_path)
                  for name in ("eos_token", "pad_token", "bos_token")}
        tokenizer = cls(backend, **tokens, chat_templates=_read_templates(folder, config, config_path))
        digest = hashlib.blake2b(tokenizer_path.read_bytes(), digest_size=16)
        digest.update(config_path.read_bytes())  # it may add tokens
        tokenizer._files_digest = digest.digest()
        return tokenizer

    @staticmethod
    def _check_added_tokens(backend: tokenizers.Tokenizer, decoder: Any, path: Path) -> None:
        """tokenizer_config.json repeats the added tokens; add any that tokenizer.json lacks and refuse
        a folder whose two files disagree on an id (it would decode differently from transformers)."""
        if decoder is None:
            return
        if not isinstance(decoder, dict):
            raise TokenizerError(f"{path} has an added_tokens_decoder that is not an object.")
        for key, entry in sorted(decoder.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else -1):
            if not (str(key).isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
                raise TokenizerError(f"{path} has a malformed added_tokens_decoder entry {key!r}.")
            token_id, content = int(key), entry["content"]
            found = backend.token_to_id(content)
            if found is None:
                added = tokenizers.AddedToken(
                    content, single_word=bool(entry.get("single_word", False)),
                    lstrip=bool(entry.get("lstrip", False)), rstrip=bool(entry.get("rstrip", False)),
                    normalized=bool(entry.get("normalized", False)), special=bool(entry.get("special", False)))
                (backend.add_special_tokens if added.special else backend.add_tokens)([added])
                found = backend.token_to_id(content)
            if found != token_id:
                raise TokenizerError(f"{path} gives {content!r} id {token_id}, but tokenizer.json gives it {found}.")

    def _special_id(self, token: str | None, name: str) -> int | None:
        if token is None:
            return None
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"The {name} {token!r} is not in the vocabulary.")
        return token_id

    # --- tokens -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; ids outside the vocabulary (padding rows of the embedding) decode to nothing."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def byte_pieces(self, skip_special_tokens: bool = False) -> list[bytes] | None:
        """Each id's bytes, such that decode(ids) is the lossy UTF-8 decode of their join (b"" for
        ids decode drops); None unless the decoder is byte-level. Built on first use (~0.25 s)."""
        skip = bool(skip_special_tokens)
        if skip not in self._byte_pieces:
            if skip:
                pieces = self.byte_pieces(False)
                if pieces is not None:
                    pieces = list(pieces)
                    for i in self.special_token_ids:
                        pieces[i] = b""
            elif self._files_digest in _BYTE_PIECES_BY_FILES:
                pieces = _BYTE_PIECES_BY_FILES[self._files_digest]
            else:
                pieces = byte_pieces(self._backend)
                if self._files_digest is not None:
                    _BYTE_PIECES_BY_FILES[self._files_digest] = pieces
            self._byte_pieces[skip] = pieces
        return self._byte_pieces[skip]

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    # --- chat ---------------------------------------------------------------------------------

    def chat_template(self, tools: list[dict] | None = None) -> ChatTemplate:
        """The compiled template transformers would pick: "tool_use" when tools are given and it exists."""
        name = "tool_use" if tools is not None and "tool_use" in self.chat_templates else "default"
        if name not in self.chat_templates:
            if not self.chat_templates:
                raise TokenizerError("This tokenizer has no chat template.")
            raise TokenizerError(f"This tokenizer has no default chat template (it has {sorted(self.chat_templates)}).")
        if name not in self._compiled:
            self._compiled[name] = ChatTemplate(self.chat_templates[name])
        return self._compiled[name]

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text for a conversation (transformers' ``apply_chat_template(tokenize=False)``)."""
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                     "enable_thinking": enable_thinking, **template_kwargs}
        return self.chat_template(tools).render(messages, tools=tools,
                                                add_generation_prompt=add_generation_prompt, **variables)

    def encode_chat(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        **template_kwargs: Any,
    ) -> list[int]:
        """Token ids of ``apply_chat_template(...)``; the template writes the special tokens itself."""
        text = self.apply_chat_template(messages, tools, add_generation_prompt, enable_thinking, **template_kwargs)
        return self.encode(text, add_special_tokens=False)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_token={self.eos_token!r})"
