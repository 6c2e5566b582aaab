"""One token per character: the GPT mode's default tokenizer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from machine_translation.data.bpe_tokenizer import SPECIAL_TOKENS, _file


class CharTokenizer:
    """One token per character: the vocabulary is the training text's characters.

    Characters outside the vocabulary encode as ``<unk>`` (validation text), or raise
    a ValueError naming them with ``strict=True`` (a prompt, where silently changing
    the user's text would be wrong).

    >>> tokenizer = CharTokenizer.train("to be or not")
    >>> tokenizer.vocab_size, tokenizer.encode("be"), tokenizer.decode([5, 6, 10])
    (11, [5, 6], 'bet')
    """

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3

    def __init__(self, characters: str) -> None:
        """Ids ``4, 5, ...`` for ``characters`` in order (each once).

        Raises:
            ValueError: a character is repeated or is not a single code point.
        """
        if len(set(characters)) != len(characters):
            raise ValueError("a character tokenizer's characters must be distinct")
        self.characters = characters
        first = len(SPECIAL_TOKENS)
        self._ids = {char: first + index for index, char in enumerate(characters)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The tokenizer of every distinct character in ``text`` (sorted).

        Raises:
            ValueError: ``text`` is empty.
        """
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.characters)

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of ``text`` outside the vocabulary, in order."""
        return list(dict.fromkeys(char for char in text if char not in self._ids))

    def encode(self, text: str, strict: bool = False) -> list[int]:
        """Token ids of ``text``, one per character (no BOS/EOS).

        Raises:
            ValueError: with ``strict``, naming the characters never seen in training.
        """
        if strict and (unknown := self.unknown_characters(text)):
            shown = ", ".join(repr(char) for char in unknown[:10])
            raise ValueError(
                f"characters not in the model's vocabulary: {shown}; the model only "
                f"knows the {len(self.characters)} characters of its training text"
            )
        return [self._ids.get(char, self.unk_id) for char in text]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, skipping special tokens.

        Raises:
            ValueError: an id is outside ``[0, vocab_size)``.
        """
        first = len(SPECIAL_TOKENS)
        chars = []
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )
            if token_id >= first:
                chars.append(self.characters[token_id - first])
        return "".join(chars)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "characters": self.characters})

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """Raises ValueError when ``text`` is not a character tokenizer's JSON."""
        try:
            payload = json.loads(text)
            if payload.get("type") != "char":
                raise ValueError("not a character tokenizer")
            return cls(payload["characters"])
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as error:
            raise ValueError(f"not a character tokenizer JSON: {error}") from error

    def save(self, path: str | Path) -> None:
        _file(path).write_text(self.to_json(), encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"
