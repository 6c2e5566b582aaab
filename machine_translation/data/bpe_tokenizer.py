"""The joint byte-level BPE tokenizer of translation (English and French alike).

Source and target share one vocabulary (and so one embedding table): names, numbers
and many words ("restaurant", "piano") are spelled the same in both languages.

The BPE is **byte-level** (GPT-2, RoBERTa): text is split into words, each word is
read as UTF-8 bytes, and merges are learned over bytes. Every string is made of the
256 byte symbols, so the tokenizer is lossless and never emits ``<unk>``: accents
(é, œ, É), typographic apostrophes (’), « guillemets », the narrow no-break space
that Tatoeba puts before ``!`` and ``?``, emoji and Arabic all round-trip, with no
character inventory to keep complete. A SentencePiece-style (Metaspace) BPE is
lossless only with byte fallback, which means managing 256 extra ``<0xNN>`` tokens
by hand. On this data a French-aware word split (keeping ``l'`` with its word) saves
only ~3% of French tokens, so the standard GPT-2 split is kept.

The pipeline, stored in the tokenizer's JSON:

- **normalize**: Unicode NFC, so that "é" typed as ``e`` + combining accent and as one
  code point give the same tokens; then strip Unicode whitespace at both ends. Nothing
  else: inner spaces, double spaces and case are kept.
- **pre-tokenize**: a space is prefixed, so a sentence's first word gets the same
  tokens as the same word mid-sentence; then GPT-2's split into words, numbers,
  punctuation runs and spaces.
- **decode**: bytes back to text, then the prefixed space is removed.

So ``decode(encode(text)) == normalize(text)`` for every string.

Special tokens have fixed ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3.

:class:`CharTokenizer` is the GPT mode's default: one id per character seen in the
training text (65 for Tiny Shakespeare), after the same four special ids. It is the
classic character-level language model, whose loss is directly in nats per character.
Both tokenizers save to JSON; :func:`tokenizer_from_json` reads either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.trainers import BpeTrainer

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"


SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # in id order


FILENAME = "tokenizer.json"


_SURROGATES = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    """Replaces lone surrogates, which UTF-8 cannot encode, by U+FFFD.

    They reach Python strings through ``errors="surrogateescape"`` or broken JSON.

    >>> replace_surrogates("a\\ud800b")
    'a�b'
    """
    return _SURROGATES.sub("\ufffd", text)


def min_vocab_size() -> int:
    """The smallest vocabulary: the special tokens and the 256 byte symbols.

    >>> min_vocab_size()
    260
    """
    return len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())


class BPETokenizer:
    """A joint byte-level BPE tokenizer for source and target text.

    >>> tokenizer = BPETokenizer.train(["Qui es-tu ?", "Va !"] * 10, vocab_size=280)
    >>> ids = tokenizer.encode("Qui es-tu ?")
    >>> tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id])
    'Qui es-tu ?'
    """

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3

    def __init__(self, tokenizer: Tokenizer) -> None:
        """Wraps a ``tokenizers.Tokenizer``; use ``train``, ``from_json`` or ``load``.

        Raises:
            ValueError: The special tokens are not at ids 0-3.
        """
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected_id:
                raise ValueError(
                    f"special token {token!r} has id {tokenizer.token_to_id(token)}, "
                    f"expected {expected_id}; this is not a tokenizer of this project"
                )
        # Text such as "<s>" in a sentence is then encoded as the characters it
        # is, never as a special id. This flag is not saved in the JSON.
        tokenizer.encode_special_tokens = True
        self._tokenizer = tokenizer

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2
    ) -> BPETokenizer:
        """Learns merges on ``texts`` (both languages, for a joint vocabulary).

        Args:
            texts: Sentences, read once; a generator is fine.
            vocab_size: Size of the vocabulary, special tokens included. A small
                corpus can run out of pairs first and give a smaller one.
            min_frequency: A pair seen fewer times than this is never merged.

        Raises:
            ValueError: ``vocab_size`` cannot hold the special tokens and the 256
                byte symbols, ``min_frequency`` is negative, or ``texts`` holds no
                text.
        """
        if vocab_size < min_vocab_size():
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} "
                f"special tokens and the 256 byte symbols need at least "
                f"{min_vocab_size()}"
            )
        if min_frequency < 0:
            raise ValueError(f"min_frequency={min_frequency} must be ≥ 0")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Strip()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.Sequence(
            # ByteLevel returns one string; Strip then drops the prefixed space.
            [decoders.ByteLevel(), decoders.Strip(" ", 1, 0)]
        )
        trainer = BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            # All 256 bytes, even unseen ones: any text stays encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        non_blank = 0

        def counted() -> Iterator[str]:
            nonlocal non_blank
            for text in texts:
                non_blank += bool(text.strip())
                yield replace_surrogates(text)

        tokenizer.train_from_iterator(counted(), trainer)
        # Checked after the single pass, so that a generator is read only once.
        if not non_blank:
            raise ValueError("cannot train a tokenizer: the corpus holds no text")
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """The number of ids, special tokens included: every id is below it."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def normalize(self, text: str) -> str:
        """The text that ``decode(encode(text))`` returns: NFC, stripped."""
        return self._tokenizer.normalizer.normalize_str(replace_surrogates(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without BOS and EOS; ``""`` gives ``[]``."""
        try:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # lone surrogates cannot cross into Rust; retry without
            encoding = self._tokenizer.encode(
                replace_surrogates(text), add_special_tokens=False
            )
        return encoding.ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(text) for text in texts]``, computed in parallel by the library.

        In a process forked after this ran (DataLoader workers), the library falls
        back to one thread: encode corpora before forking.
        """
        texts = list(texts)
        try:
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            encodings = self._tokenizer.encode_batch(
                [replace_surrogates(text) for text in texts], add_special_tokens=False
            )
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, skipping PAD, BOS, EOS and UNK.

        Raises:
            ValueError: An id is outside ``[0, vocab_size)``.
        """
        return self._tokenizer.decode(self._checked(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """``[decode(ids) for ids in batch]``, computed in parallel by the library."""
        return self._tokenizer.decode_batch(
            [self._checked(ids) for ids in batch], skip_special_tokens=True
        )

    def _checked(self, ids: Sequence[int]) -> list[int]:
        # The library silently drops unknown ids; an id past the vocabulary means the
        # model and the tokenizer do not belong together, which must not pass quietly.
        ids = [int(token_id) for token_id in ids]
        vocab_size = self.vocab_size
        for token_id in ids:
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary [0, {vocab_size})"
                )
        return ids

    def to_json(self) -> str:
        """The whole tokenizer (vocabulary, merges, pipeline) as a JSON string."""
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """The tokenizer that ``to_json`` wrote.

        Raises:
            ValueError: ``text`` is not a tokenizer's JSON, or not one of ours.
        """
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as error:  # the library raises a bare Exception
            raise ValueError(f"not a tokenizer JSON: {error}") from error
        return cls(tokenizer)

    def save(self, path: str | Path) -> None:
        """Writes the JSON to ``path``, or to ``path/tokenizer.json`` for a folder."""
        _file(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Reads what ``save`` wrote; ``path`` is the file or its folder."""
        return cls.from_json(_file(path).read_text(encoding="utf-8"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() else path
