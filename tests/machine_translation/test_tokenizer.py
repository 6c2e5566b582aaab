"""The joint BPE tokenizer: lossless on real French and English, fixed special ids."""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from machine_translation.data.bpe_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    BPETokenizer,
)

DATA = Path(__file__).resolve().parents[2] / "data"

HARD_FRENCH = [
    "Va !",
    "Qui es-tu ?",
    "Attention : il pleut ; prends un parapluie.",
    "« Bonjour », dit-il.",
    "«Bonjour»",
    "L'homme est arrivé aujourd'hui.",
    "L’homme qu’elle aime.",
    "Où est la bibliothèque ? Je ne sais pas. Demande à Éric !",
    "Ça coûte 12,50 € depuis le 1er janvier 2024.",
    "Noël, cœur, œuvre, Ægée, naïf, Haïti, maïs, Çà et là.",
    "ÉTÉ À L'ÎLE, ÊTRE OU NE PAS ÊTRE",
    "Une porte-fenêtre, un arc-en-ciel, peut-être.",
    "Va\u202f! Qui es-tu\u202f? «\u00a0Non\u00a0»",  # narrow and plain no-break spaces
    "Deux  espaces, puis\tune tabulation.",
    "Il a dit : « C'est fini ! » Puis il est parti…",
    "Where's the café? It isn't far — it's the 3rd on the left.",
]

ODD_TEXT = [
    "",
    "   ",
    "\n\t ",
    "😀 👩‍👩‍👧 🇫🇷",
    "\x00\x01\x07\x1b[31m\x7f",
    "مرحبا بالعالم",
    "שלום עולם",
    "e\u0301te\u0301 n\u0303 a\u0301\u0300\u0302",  # combining accents, some composable
    "<s> </s> <pad> <unk> a<s>b",
    "x" * 10_000,
    "Un homme. " * 1_000,
]


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return file.read().splitlines()


def normalized(text: str) -> str:
    """The documented normalization, written independently of the tokenizer."""
    return unicodedata.normalize("NFC", text).strip()


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    """Trained on a slice of the real training text, both languages (~1 s)."""
    english = read_lines(DATA / "multi30k" / "train.en.gz")[:5_000]
    french = read_lines(DATA / "multi30k" / "train.fr.gz")[:5_000]
    pairs = [
        line.split("\t") for line in read_lines(DATA / "tatoeba" / "eng-fra.tsv.gz")
    ]
    # Every 15th pair: short and long Tatoeba sentences alike.
    tatoeba = [side for pair in pairs[::15] for side in pair]
    return BPETokenizer.train(english + french + tatoeba, vocab_size=8000)


@pytest.mark.parametrize(
    "name",
    ["val.en", "val.fr", "test_2016_flickr.en", "test_2016_flickr.fr"],
)
def test_every_multi30k_held_out_line_round_trips(tokenizer, name):
    lines = read_lines(DATA / "multi30k" / f"{name}.gz")
    decoded = tokenizer.decode_batch(tokenizer.encode_batch(lines))
    assert decoded == [normalized(line) for line in lines]


def test_every_tatoeba_french_line_round_trips(tokenizer):
    """Tatoeba's French has narrow no-break spaces before ! and ?, and ’."""
    lines = [
        line.split("\t")[1]
        for line in read_lines(DATA / "tatoeba" / "eng-fra.tsv.gz")[::4]
    ]
    decoded = tokenizer.decode_batch(tokenizer.encode_batch(lines))
    assert decoded == [normalized(line) for line in lines]


@pytest.mark.parametrize("text", HARD_FRENCH)
def test_hard_french_round_trips_exactly(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", ODD_TEXT)
def test_odd_text_round_trips_after_normalization(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(4 <= token_id < tokenizer.vocab_size for token_id in ids)
    assert tokenizer.decode(ids) == normalized(text) == tokenizer.normalize(text)


def test_empty_text_is_no_tokens(tokenizer):
    assert tokenizer.encode("") == []
    assert tokenizer.decode([]) == ""
    assert tokenizer.encode_batch([]) == []
    assert tokenizer.decode_batch([]) == []


def test_lone_surrogates_become_replacement_characters(tokenizer):
    """Not valid Unicode (UTF-8 cannot hold them), but they must not crash."""
    text = "a\ud800b"
    assert tokenizer.decode(tokenizer.encode(text)) == "a\ufffdb"
    assert tokenizer.encode_batch([text, "c"]) == [
        tokenizer.encode("a\ufffdb"),
        tokenizer.encode("c"),
    ]


def test_special_tokens_have_fixed_ids(tokenizer):
    specials = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
    assert specials == ("<pad>", "<s>", "</s>", "<unk>")
    ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id)
    assert ids == (BPETokenizer.pad_id, BPETokenizer.bos_id, 2, 3) == (0, 1, 2, 3)
    added = json.loads(tokenizer.to_json())["added_tokens"]
    assert [(token["id"], token["content"]) for token in added] == list(
        enumerate(specials)
    )


def test_encode_never_emits_special_ids(tokenizer):
    lines = [*read_lines(DATA / "multi30k" / "val.fr.gz"), "<s>", "</s><pad><unk>"]
    assert min(min(ids) for ids in tokenizer.encode_batch(lines)) >= 4


def test_decode_skips_special_ids(tokenizer):
    ids = tokenizer.encode("Un chat noir.")
    assert tokenizer.decode([1, *ids[:2], 3, *ids[2:], 2, 0, 0]) == "Un chat noir."


def test_decode_rejects_ids_outside_the_vocabulary(tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([5, tokenizer.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode_batch([[5], [-1]])


def test_batch_methods_equal_one_at_a_time(tokenizer):
    lines = read_lines(DATA / "multi30k" / "val.en.gz")[:200] + HARD_FRENCH + ODD_TEXT
    batch = tokenizer.encode_batch(lines)
    assert batch == [tokenizer.encode(line) for line in lines]
    assert tokenizer.decode_batch(batch) == [tokenizer.decode(ids) for ids in batch]


def test_merges_compress_french(tokenizer):
    sentence = "Un homme en chemise bleue est assis sur un banc."
    assert len(tokenizer.encode(sentence)) < len(sentence) / 3
    lines = read_lines(DATA / "multi30k" / "val.fr.gz")
    tokens = sum(map(len, tokenizer.encode_batch(lines)))
    assert tokens < sum(map(len, lines)) / 3


def test_vocab_size_bounds_every_id(tokenizer):
    assert 1000 < tokenizer.vocab_size <= 8000
    json_vocab = json.loads(tokenizer.to_json())["model"]["vocab"]
    assert sorted(json_vocab.values()) == list(range(tokenizer.vocab_size))


def test_json_round_trip_gives_the_same_ids(tokenizer):
    restored = BPETokenizer.from_json(tokenizer.to_json())
    lines = read_lines(DATA / "multi30k" / "val.fr.gz") + HARD_FRENCH + ODD_TEXT
    assert restored.encode_batch(lines) == tokenizer.encode_batch(lines)
    assert restored.vocab_size == tokenizer.vocab_size
    assert restored.to_json() == tokenizer.to_json()


@pytest.mark.parametrize("target", ["tokenizer.json", "."])
def test_save_and_load_round_trip(tokenizer, tmp_path, target):
    """``save`` and ``load`` take the file or the run directory that holds it."""
    tokenizer.save(tmp_path / target)
    assert (tmp_path / "tokenizer.json").is_file()
    restored = BPETokenizer.load(tmp_path / target)
    assert restored.encode_batch(HARD_FRENCH) == tokenizer.encode_batch(HARD_FRENCH)


def test_from_json_rejects_other_json():
    with pytest.raises(ValueError, match="not a tokenizer JSON"):
        BPETokenizer.from_json('{"hello": 1}')


def test_from_json_rejects_moved_special_tokens():
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    other = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    with pytest.raises(ValueError, match="special token '<pad>' has id 1"):
        BPETokenizer.from_json(other.to_str())


@pytest.mark.parametrize("texts", [[], ["", "  ", "\n"]])
def test_training_on_no_text_is_an_error(texts):
    with pytest.raises(ValueError, match="corpus holds no text"):
        BPETokenizer.train(texts, vocab_size=300)


def test_training_with_too_small_a_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="vocab_size=259 is too small"):
        BPETokenizer.train(["Va !"], vocab_size=259)


def test_smallest_vocabulary_is_bytes_only_and_still_lossless():
    tokenizer = BPETokenizer.train((line for line in HARD_FRENCH), vocab_size=260)
    assert tokenizer.vocab_size == 260
    text = "Noël à l’île ?"
    assert len(tokenizer.encode(text)) == len(text.encode("utf-8")) + 1  # + " "
    assert tokenizer.decode(tokenizer.encode(text)) == text


# --- the character tokenizer of the GPT mode ----------------------------------------


def test_char_tokenizer_round_trip_unknowns_and_json():
    from machine_translation.data.char_tokenizer import CharTokenizer
    from machine_translation.data.tokenizers import tokenizer_from_json

    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    tokenizer = CharTokenizer.train(text)
    assert tokenizer.vocab_size == 4 + len(set(text))
    ids = tokenizer.encode(text)
    assert min(ids) >= 4 and tokenizer.decode(ids) == text
    assert tokenizer.encode("Rz") == [tokenizer.encode("R")[0], tokenizer.unk_id]
    with pytest.raises(ValueError, match="'z'"):
        tokenizer.encode("Rz", strict=True)
    again = tokenizer_from_json(tokenizer.to_json())
    assert isinstance(again, CharTokenizer) and again.encode(text) == ids
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])
