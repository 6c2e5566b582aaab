"""Which tokenizer a saved JSON text holds."""

from __future__ import annotations

from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.char_tokenizer import CharTokenizer


def tokenizer_from_json(text: str) -> BPETokenizer | CharTokenizer:
    """Whichever tokenizer wrote ``text`` (checkpoints store this JSON).

    Raises:
        ValueError: ``text`` is neither tokenizer's JSON.
    """
    if text.lstrip().startswith('{"type": "char"'):
        return CharTokenizer.from_json(text)
    return BPETokenizer.from_json(text)
