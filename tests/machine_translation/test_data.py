import gzip
import random
import time
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from machine_translation.config.compose import PROJECT_ROOT
from machine_translation.data.batching import Batch, TokenBatchSampler, collate
from machine_translation.data.cleaning import clean_corpus
from machine_translation.data.corpus import CorpusSpec, DataError, ParallelCorpus
from machine_translation.data.readers import (
    load_corpus,
    load_hf_dataset,
    read_aligned_files,
    read_tsv_pairs,
    tatoeba_split,
)

ROOT = Path(__file__).resolve().parents[2]
MULTI30K = ROOT / "data" / "multi30k"
TATOEBA = ROOT / "data" / "tatoeba" / "eng-fra.tsv.gz"
PAD, BOS, EOS = 0, 1, 2


def write(path: Path, data: bytes) -> Path:
    """Writes bytes, gzip-compressed when the name ends in .gz."""
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# --- The shipped corpora ---


@pytest.mark.parametrize(
    ("split", "pairs"), [("train", 29_000), ("val", 1_014), ("test_2016_flickr", 1_000)]
)
def test_multi30k_splits_load_aligned_with_documented_counts(split, pairs):
    corpus = read_aligned_files(
        MULTI30K / f"{split}.en.gz", MULTI30K / f"{split}.fr.gz"
    )
    assert len(corpus) == pairs
    assert corpus.name == split
    _, skipped = clean_corpus(corpus)
    assert skipped == {"empty": 0, "length_ratio": 0}


def test_multi30k_keeps_french_accents():
    corpus = read_aligned_files(MULTI30K / "train.en.gz", MULTI30K / "train.fr.gz")
    assert corpus.sources[0] == "Two young, White males are outside near many bushes."
    assert (
        corpus.targets[0] == "Deux jeunes hommes blancs sont dehors près de buissons."
    )
    french = "".join(corpus.targets)
    assert all(letter in french for letter in "éèàçêô")
    assert "Ã" not in french  # the mark of UTF-8 read as Latin-1


def test_tatoeba_loads_all_pairs_and_its_splits_partition_the_english():
    everything = read_tsv_pairs(TATOEBA)
    assert len(everything) == 74_252
    assert (everything.sources[0], everything.targets[0]) == ("Go.", "Va !")
    splits = {
        name: read_tsv_pairs(TATOEBA, split=name) for name in ("train", "valid", "test")
    }
    # The counts documented in data/tatoeba/README.md.
    assert {name: len(c) for name, c in splits.items()} == {
        "train": 72_031,
        "valid": 1_115,
        "test": 1_106,
    }
    english = {name: set(corpus.sources) for name, corpus in splits.items()}
    assert not english["train"] & english["valid"]
    assert not english["train"] & english["test"]
    assert not english["valid"] & english["test"]
    pairs = {
        name: set(zip(c.sources, c.targets, strict=True)) for name, c in splits.items()
    }
    assert set.union(*pairs.values()) == set(
        zip(everything.sources, everything.targets, strict=True)
    )
    assert splits["test"].name == "eng-fra/test"


def test_tatoeba_split_is_stable_and_about_three_percent_held_out():
    sentences = [f"Sentence number {i}." for i in range(20_000)]
    held_out = sum(tatoeba_split(s) != "train" for s in sentences) / len(sentences)
    assert 0.025 < held_out < 0.035
    assert [tatoeba_split(s) for s in sentences[:50]] == [
        tatoeba_split(s) for s in sentences[:50]
    ]


# --- Reading files, and what goes wrong ---


def test_gzip_and_plain_files_read_the_same(tmp_path):
    english = b"A dog runs.\nTwo cats  \n\r\n"
    french = "Un chien court.\r\n  Deux chats\nÉté\n".encode()
    tsv = b"A dog runs.\tUn chien court.\textra\n Two cats \t Deux chats \n"
    for suffix in ("", ".gz"):
        write(tmp_path / f"c.en{suffix}", english)
        write(tmp_path / f"c.fr{suffix}", french)
        write(tmp_path / f"c.tsv{suffix}", tsv)
    plain = read_aligned_files(tmp_path / "c.en", tmp_path / "c.fr")
    zipped = read_aligned_files(tmp_path / "c.en.gz", tmp_path / "c.fr.gz")
    assert plain == zipped
    assert plain.sources == ["A dog runs.", "Two cats", ""]
    assert plain.targets == ["Un chien court.", "Deux chats", "Été"]
    assert read_tsv_pairs(tmp_path / "c.tsv") == read_tsv_pairs(tmp_path / "c.tsv.gz")
    assert read_tsv_pairs(tmp_path / "c.tsv").targets == [
        "Un chien court.",
        "Deux chats",
    ]


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    source = write(tmp_path / "a.en", b"one\ntwo\nthree\n")
    target = write(tmp_path / "a.fr.gz", b"un\ndeux\n")
    with pytest.raises(DataError, match=r"a\.en has 3 lines but .*a\.fr\.gz has 2"):
        read_aligned_files(source, target)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_undecodable_bytes_name_the_file_and_line(tmp_path, suffix):
    source = write(tmp_path / f"latin1.fr{suffix}", "Bonjour\nÉté\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"latin1\.fr{suffix}:2: not UTF-8") as error:
        read_tsv_pairs(source)
    assert "\n" not in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.en\.gz: no such file"):
        read_aligned_files(tmp_path / "nowhere.en.gz", tmp_path / "nowhere.fr.gz")


def test_damaged_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(gzip.compress(b"a\tb\n" * 1000)[:-10])  # cut before its end
    with pytest.raises(DataError, match=r"cut\.tsv\.gz: cannot read it"):
        read_tsv_pairs(path)


def test_tsv_line_without_a_tab_names_file_and_line(tmp_path):
    path = write(tmp_path / "pairs.tsv", b"Hello.\tBonjour.\nGoodbye. Au revoir.\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:2: expected source<TAB>target"):
        read_tsv_pairs(path)


def test_tsv_rejects_an_unknown_split(tmp_path):
    path = write(tmp_path / "pairs.tsv", b"Hello.\tBonjour.\n")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_tsv_pairs(path, split="dev")


# --- Cleaning ---


def test_clean_corpus_skips_and_counts_bad_pairs_with_one_warning(tmp_path):
    path = write(
        tmp_path / "pairs.tsv",
        "Hello.\tBonjour.\n"
        "Empty target.\t\n"  # an empty side is a pair to skip, not a malformed line
        "\tSource vide.\n"
        "Hi.\tCeci est une phrase beaucoup trop longue pour traduire « Hi. ».\n"
        "Yes.\tOui.\n".encode(),
    )
    corpus = read_tsv_pairs(path)
    assert len(corpus) == 5
    with pytest.warns(UserWarning, match="skipped 3 of 5 pairs") as record:
        kept, skipped = clean_corpus(corpus, max_length_ratio=9.0)
    assert len(record) == 1
    assert skipped == {"empty": 2, "length_ratio": 1}
    assert list(zip(kept.sources, kept.targets, strict=True)) == [
        ("Hello.", "Bonjour."),
        ("Yes.", "Oui."),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean corpus warns about nothing
        assert clean_corpus(kept)[1] == {"empty": 0, "length_ratio": 0}


# --- Config entries and the Hub ---


def test_load_corpus_resolves_relative_paths_against_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/ is not under the working directory
    spec = CorpusSpec(
        kind="aligned",
        source="data/multi30k/val.en.gz",
        target="data/multi30k/val.fr.gz",
        limit=10,
    )
    corpus = load_corpus(spec, root=ROOT)
    assert len(corpus) == 10
    tsv = load_corpus(
        CorpusSpec(kind="tsv", path="data/tatoeba/eng-fra.tsv.gz", split="test"), ROOT
    )
    assert len(tsv) == 1_106
    with pytest.raises(DataError, match=r"data/multi30k/val\.en\.gz: no such file"):
        load_corpus(spec)
    with pytest.raises(DataError, match="kind 'tsv' needs path"):
        load_corpus(CorpusSpec(kind="tsv"))


def test_corpus_spec_is_a_valid_structured_config():
    schema = OmegaConf.structured(CorpusSpec)
    node = OmegaConf.merge(
        schema, {"kind": "huggingface", "dataset": "wmt14", "limit": 5}
    )
    spec = OmegaConf.to_object(node)
    assert isinstance(spec, CorpusSpec) and spec.limit == 5 and spec.source_lang == "en"
    with pytest.raises(ValueError, match="corpus kind 'csv'"):
        CorpusSpec(kind="csv")


def _offline(monkeypatch):
    """Hub offline mode, also for libraries already imported (they read it once)."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return datasets


def test_uncached_hub_dataset_offline_is_a_one_line_data_error(monkeypatch):
    _offline(monkeypatch)
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        load_hf_dataset("no-such-user/not-cached-wmt", "fr-en", "train")
    message = str(error.value)
    assert time.monotonic() - start < 30
    assert "\n" not in message
    assert "'no-such-user/not-cached-wmt' (fr-en)" in message
    assert "Run once online to cache it" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_hub_translation_column_becomes_a_corpus(monkeypatch):
    datasets = _offline(monkeypatch)
    table = {
        "translation": [
            {"en": " Hello. ", "fr": "Bonjour."},
            {"en": "Thanks.", "fr": "Merci."},
            {"en": "Yes.", "fr": "Oui."},
        ]
    }
    calls = []

    def fake_load_dataset(name, subset, split):
        calls.append((name, subset, split))
        return datasets.Dataset.from_dict(table)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_hf_dataset("opus_books", "en-fr", "train", limit=2)
    assert calls == [("opus_books", "en-fr", "train")]
    assert corpus == ParallelCorpus(
        ["Hello.", "Thanks."], ["Bonjour.", "Merci."], "opus_books/en-fr/train"
    )
    with pytest.raises(DataError, match=r"languages \['en', 'fr'\], not 'en' and 'de'"):
        load_hf_dataset("opus_books", "en-fr", "train", target_lang="de")


# --- Token-bucketed batches ---


def random_lengths(n=600, seed=0):
    rng = random.Random(seed)
    sources = [rng.randint(1, 40) for _ in range(n)]
    return sources, [max(1, s + rng.randint(-5, 8)) for s in sources]


def cost(batch, sources, targets):
    return len(batch) * max(max(sources[i], targets[i]) for i in batch)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch_within_the_token_budget(shuffle):
    sources, targets = random_lengths()
    sources[7] = 300  # longer than max_tokens: it goes alone
    sampler = TokenBatchSampler(sources, targets, max_tokens=256, shuffle=shuffle)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(sources)))
    assert [7] in batches
    assert all(cost(b, sources, targets) <= 256 for b in batches if b != [7])
    # Bucketing: little padding (random batches of these lengths pad about 70% more).
    real = sum(max(s, t) for s, t in zip(sources, targets, strict=True)) - 300
    padded = sum(cost(b, sources, targets) for b in batches if b != [7])
    assert padded < 1.25 * real


def test_epochs_differ_and_the_same_seed_and_epoch_repeat():
    sources, targets = random_lengths()
    first = TokenBatchSampler(sources, targets, max_tokens=256, seed=3)
    again = TokenBatchSampler(sources, targets, max_tokens=256, seed=3)
    epoch0 = list(first)
    assert list(again) == epoch0
    first.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 != epoch0
    assert sorted(map(sorted, epoch1)) != sorted(map(sorted, epoch0))  # ties regroup
    again.set_epoch(1)
    assert list(again) == epoch1
    other_seed = TokenBatchSampler(sources, targets, max_tokens=256, seed=4)
    assert list(other_seed) != epoch0
    fixed = TokenBatchSampler(sources, targets, max_tokens=256, shuffle=False)
    in_order = list(fixed)
    fixed.set_epoch(5)
    assert list(fixed) == in_order


def test_resume_from_state_yields_exactly_the_remaining_batches(tmp_path):
    sources, targets = random_lengths()
    sampler = TokenBatchSampler(sources, targets, max_tokens=256, seed=1)
    sampler.set_epoch(2)
    uninterrupted = list(sampler)
    assert sampler.state_dict() == {"epoch": 2, "batches_done": 0}

    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(5)]
    # Saved as a training checkpoint is: plain ints under weights_only=True.
    torch.save({"sampler": sampler.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["sampler"]
    assert state == {"epoch": 2, "batches_done": 5}

    resumed = TokenBatchSampler(sources, targets, max_tokens=256, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a loop that sets the epoch on every pass keeps its place
    rest = list(resumed)
    assert seen + rest == uninterrupted
    assert resumed.state_dict() == {"epoch": 2, "batches_done": 0}
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(resumed)


def test_two_ranks_split_the_one_rank_epoch():
    sources, targets = random_lengths()
    single = list(TokenBatchSampler(sources, targets, max_tokens=256, seed=5))
    ranks = [
        TokenBatchSampler(
            sources, targets, max_tokens=256, seed=5, rank=r, world_size=2
        )
        for r in range(2)
    ]
    per_rank = [list(sampler) for sampler in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == len(single) // 2
    as_sets = [{tuple(batch) for batch in batches} for batches in per_rank]
    assert not as_sets[0] & as_sets[1]
    kept = single[: 2 * len(ranks[0])]
    assert as_sets[0] | as_sets[1] == {tuple(batch) for batch in kept}
    # Step i of rank r is batch 2i + r of the one-rank epoch.
    assert all(per_rank[j % 2][j // 2] == kept[j] for j in range(len(kept)))


def test_sampler_drives_a_data_loader():
    sources, targets = random_lengths(50)
    pairs = [([5] * s, [6] * t) for s, t in zip(sources, targets, strict=True)]
    sampler = TokenBatchSampler(sources, [t + 1 for t in targets], max_tokens=128)
    loader = torch.utils.data.DataLoader(
        pairs,
        batch_sampler=sampler,
        collate_fn=lambda items: collate(
            *zip(*items, strict=True), pad_id=PAD, bos_id=BOS, eos_id=EOS
        ),
    )
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert sum(batch.source_tokens for batch in batches) == sum(sources)
    assert all(b.target_input.numel() <= 128 for b in batches)


# --- Collation ---


def test_collate_pads_and_places_bos_and_eos():
    # Token 0 is also PAD: the masks come from lengths, so a real 0 stays real.
    batch = collate(
        [[5, 6, 7], [0]], [[8], [9, 10, 11]], pad_id=PAD, bos_id=BOS, eos_id=EOS
    )
    assert batch.source_ids.tolist() == [[5, 6, 7], [0, PAD, PAD]]
    assert batch.source_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.target_input.tolist() == [[BOS, 8, PAD, PAD], [BOS, 9, 10, 11]]
    assert batch.target_output.tolist() == [[8, EOS, PAD, PAD], [9, 10, 11, EOS]]
    assert batch.target_mask.tolist() == [[True, True, False, False], [True] * 4]
    for tensor in (batch.source_ids, batch.target_input, batch.target_output):
        assert tensor.dtype == torch.long
    assert batch.source_mask.dtype == batch.target_mask.dtype == torch.bool
    assert (batch.source_tokens, batch.target_tokens) == (4, 6)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(
        moved.target_output, batch.target_output
    )


def test_collate_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="as many sources as targets"):
        collate([[5]], [[6], [7]], pad_id=PAD, bos_id=BOS, eos_id=EOS)


# --- text windows for the GPT mode --------------------------------------------------


def test_block_sampler_resumes_and_shards_like_one_process():
    from machine_translation.data.text import BlockSampler

    def epoch(sampler):
        return [starts for starts in sampler]

    whole = BlockSampler(1000, 10, 4, seed=3)
    first_epoch = epoch(whole)
    assert len(first_epoch) == len(whole) == 98 // 4
    assert all(0 <= s <= 1000 - 11 for batch in first_epoch for s in batch)

    resumed = BlockSampler(1000, 10, 4, seed=3)
    iterator = iter(resumed)
    taken = [next(iterator) for _ in range(5)]
    state = resumed.state_dict()
    fresh = BlockSampler(1000, 10, 4, seed=3)
    fresh.load_state_dict(state)
    assert taken + epoch(fresh) == first_epoch

    ranks = [BlockSampler(1000, 10, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    per_rank = [epoch(sampler) for sampler in ranks]
    interleaved = [b for pair in zip(*per_rank, strict=True) for b in pair]
    assert interleaved == first_epoch[: len(interleaved)]

    whole.set_epoch(1)
    assert epoch(whole) != first_epoch


def test_text_files_split_and_errors(tmp_path):
    from machine_translation.data.text import read_text, split_text

    path = tmp_path / "text.txt"
    path.write_text("abc\ndef\n", encoding="utf-8")
    assert read_text(path) == "abc\ndef"
    assert split_text("x" * 100, 0.1) == ("x" * 90, "x" * 10)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="holds no text"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="valid_fraction"):
        split_text("abc", 1.0)


def test_the_phrasebook_loads_and_repeat_shows_each_pair_that_many_times():
    spec = {"kind": "tsv", "path": "data/phrasebook/phrasebook.tsv"}
    once = load_corpus(CorpusSpec(**spec), root=PROJECT_ROOT)
    assert len(once) >= 700 and all(once.sources) and all(once.targets)
    assert ("Thank you.", "Merci.") in set(zip(once.sources, once.targets, strict=True))
    twice = load_corpus(CorpusSpec(**spec, repeat=2), root=PROJECT_ROOT)
    assert twice.sources == once.sources * 2 and twice.targets == once.targets * 2
    with pytest.raises(ValueError, match="repeat 0"):
        CorpusSpec(**spec, repeat=0)
