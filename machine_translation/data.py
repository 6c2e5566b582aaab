"""Corpora and batches: from files or the Hugging Face Hub to padded tensors.

A :class:`ParallelCorpus` holds aligned source/target sentences. It comes from two
line-aligned files (:func:`read_aligned_files`), a ``source<TAB>target`` file
(:func:`read_tsv_pairs`) or a Hub dataset (:func:`load_hf_dataset`); a config entry
(:class:`CorpusSpec`) picks one of them through :func:`load_corpus`. Files may be plain
or gzip (by the ``.gz`` suffix) and must be UTF-8; each line loses its surrounding
whitespace.

Problems that make a file unusable raise :class:`DataError`, with one line naming the
file (and line) and what to do: a missing file, undecodable bytes, aligned files with
different line counts, a TSV line without two columns, a Hub dataset that cannot be
fetched. Problems of single pairs do not stop training: :func:`clean_corpus` skips
pairs with an empty side or an absurd length ratio (a sign of misalignment), counts
them by reason and warns once.

:class:`TokenBatchSampler` groups sentences of similar length into batches of at
most ``max_tokens`` padded tokens, and :func:`collate` pads them into a :class:`Batch`.

Shapes: ``b`` batch, ``s_src`` source length, ``s_tgt`` target length (with BOS/EOS).
Masks are bool and **True for real tokens**.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

SPLITS = ("train", "valid", "test")
KINDS = ("aligned", "tsv", "huggingface")


class DataError(ValueError):
    """A corpus problem, with a one-line message naming the file/line and what to do."""


@dataclass
class ParallelCorpus:
    """Aligned sentences: ``targets[i]`` translates ``sources[i]``."""

    sources: list[str]
    targets: list[str]
    name: str

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.targets):
            raise DataError(
                f"{self.name}: {len(self.sources)} sources but "
                f"{len(self.targets)} targets"
            )

    def __len__(self) -> int:
        return len(self.sources)


@dataclass
class CorpusSpec:
    """One corpus of a config list (``data.train``, ``data.valid``).

    Field types are those OmegaConf checks, so Hydra validates a config against it.
    """

    kind: str = "aligned"  # "aligned" (two line files) | "tsv" | "huggingface"
    source: str | None = None  # aligned: source file path (plain or .gz)
    target: str | None = None  # aligned: target file path
    path: str | None = None  # tsv: file path (plain or .gz); source<TAB>target
    # tsv: None = all pairs, or "train"/"valid"/"test" of tatoeba_split;
    # huggingface: the dataset split
    split: str | None = None
    dataset: str | None = None  # huggingface: Hub id, e.g. "wmt14", "opus_books"
    subset: str | None = None  # huggingface: config name, e.g. "fr-en"
    source_lang: str = "en"  # huggingface: keys of the translation column
    target_lang: str = "fr"
    limit: int | None = None  # keep only the first N pairs (None = all)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corpus kind {self.kind!r}: expected one of {KINDS}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"corpus limit {self.limit}: expected None or >= 0")


def read_lines(path: str | Path) -> list[str]:
    """The lines, without line ends, of a UTF-8 file (gzip when it ends in ``.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    number = 0
    try:
        with opener(path, "rb") as file:
            # Decoding line by line (not the whole file) is what lets an error name
            # the line; UTF-8 never has a newline byte inside a character.
            for number, raw in enumerate(file, start=1):
                encoding = "utf-8-sig" if number == 1 else "utf-8"  # drop a BOM
                lines.append(raw.decode(encoding).rstrip("\r\n"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}:{number}: not UTF-8 (byte {error.object[error.start]:#04x} at "
            f"column {error.start + 1}); re-encode the file as UTF-8"
        ) from None
    except (OSError, EOFError, zlib.error) as error:  # e.g. a truncated .gz
        raise DataError(f"{path}: cannot read it ({error}); is it damaged?") from None
    return lines


def _stem(path: str | Path) -> str:
    """``data/multi30k/train.en.gz`` → ``train``; ``eng-fra.tsv.gz`` → ``eng-fra``.

    >>> _stem("data/multi30k/train.en.gz"), _stem("pairs.tsv")
    ('train', 'pairs')
    """
    name = Path(path).name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def read_aligned_files(
    source_path: str | Path, target_path: str | Path, name: str | None = None
) -> ParallelCorpus:
    """Reads two files whose line ``i`` are translations of each other.

    Raises:
        DataError: A file is missing or not UTF-8, or the line counts differ.
    """
    sources = [line.strip() for line in read_lines(source_path)]
    targets = [line.strip() for line in read_lines(target_path)]
    if len(sources) != len(targets):
        raise DataError(
            f"{source_path} has {len(sources)} lines but {target_path} has "
            f"{len(targets)}; the files must be aligned line by line"
        )
    return ParallelCorpus(sources, targets, name or _stem(source_path))


def tatoeba_split(english: str) -> str:
    """The fixed split of a pair, decided by its English sentence alone.

    A stable hash (md5, not Python's salted ``hash``) makes the split the same on every
    machine and run, and puts all translations of one English sentence in the same
    split, so a test sentence is never seen in training with another translation.
    About 1.5% of sentences go to ``"test"``, 1.5% to ``"valid"``, the rest to
    ``"train"``.

    >>> tatoeba_split("Go."), tatoeba_split("Call us."), tatoeba_split("Help me!")
    ('train', 'valid', 'test')
    >>> tatoeba_split("Go.") == tatoeba_split("Go.")
    True
    """
    digest = hashlib.md5(english.encode(), usedforsecurity=False).digest()
    bucket = int.from_bytes(digest[:8], "big") % 1000
    return "test" if bucket < 15 else "valid" if bucket < 30 else "train"


def read_tsv_pairs(
    path: str | Path, split: str | None = None, name: str | None = None
) -> ParallelCorpus:
    """Reads ``source<TAB>target`` lines (further columns are ignored).

    Args:
        path: A plain or ``.gz`` file.
        split: None for every pair, or ``"train"``/``"valid"``/``"test"`` to keep the
            pairs that :func:`tatoeba_split` assigns there (by the source sentence).
        name: Corpus name; defaults to the file stem, plus ``/split``.

    Raises:
        DataError: A file problem, or a line without a tab.
    """
    if split is not None and split not in SPLITS:
        raise DataError(f"{path}: unknown split {split!r}; expected one of {SPLITS}")
    sources, targets = [], []
    for number, line in enumerate(read_lines(path), start=1):
        # Split before stripping, so that an empty side is a pair to skip later
        # (clean_corpus), not a line without a tab.
        columns = line.split("\t")
        if len(columns) < 2:
            raise DataError(
                f"{path}:{number}: expected source<TAB>target, found no tab; "
                "fix or delete the line"
            )
        source, target = columns[0].strip(), columns[1].strip()
        if split is None or tatoeba_split(source) == split:
            sources.append(source)
            targets.append(target)
    default = _stem(path) + (f"/{split}" if split else "")
    return ParallelCorpus(sources, targets, name or default)


def hub_error(label: str, split: str, error: Exception, alternative: str) -> DataError:
    """The one-line error for a Hub dataset that could not be loaded."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return DataError(
        f"could not load Hugging Face dataset {label}, split {split!r}: {reason}. "
        f"No network? Run once online to cache it, or use {alternative}"
    )


def load_hf_dataset(
    dataset: str,
    subset: str | None,
    split: str,
    source_lang: str = "en",
    target_lang: str = "fr",
    limit: int | None = None,
) -> ParallelCorpus:
    """Loads a Hub translation dataset (a ``translation`` column of ``{lang: text}``).

    Downloads on first use and reads the local cache after that; with
    ``HF_HUB_OFFLINE=1`` only the cache is tried.

    Raises:
        DataError: One line naming the dataset when it cannot be fetched or has no
            such languages.
    """
    label = f"{dataset!r}" + (f" ({subset})" if subset else "")
    try:
        import datasets  # slow to import: only those who use the Hub pay for it

        data = datasets.load_dataset(dataset, subset, split=split)
    except Exception as error:  # any failure to fetch, whatever library raised it
        raise hub_error(
            label, split, error, "local files (kind: aligned/tsv)"
        ) from None
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    if "translation" not in data.column_names:
        raise DataError(
            f"Hugging Face dataset {label} has no 'translation' column (it has "
            f"{data.column_names}); use a translation dataset"
        )
    pairs = data["translation"]
    if pairs and not {source_lang, target_lang} <= pairs[0].keys():
        raise DataError(
            f"Hugging Face dataset {label} has languages {sorted(pairs[0])}, not "
            f"{source_lang!r} and {target_lang!r}; set source_lang/target_lang"
        )
    sources = [pair[source_lang].strip() for pair in pairs]
    targets = [pair[target_lang].strip() for pair in pairs]
    name = "/".join(part for part in (dataset, subset, split) if part)
    return ParallelCorpus(sources, targets, name)


def resolve_path(path: str, root: Path | None) -> Path:
    """``path`` as given when it exists (or is absolute), else under ``root``."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists() or root is None:
        return given
    if (Path(root) / given).exists():
        return Path(root) / given
    raise DataError(f"{given}: no such file (also looked in {root}); check the path")


def load_corpus(spec: CorpusSpec, root: Path | None = None) -> ParallelCorpus:
    """Loads the corpus a config entry describes.

    Args:
        spec: What to load.
        root: Where relative paths not found from the working directory are looked
            for (the project root, so the shipped ``data/`` works from anywhere).

    Raises:
        DataError: A missing field for the kind, or any reader's error.
    """
    needed = {"aligned": "source target", "tsv": "path", "huggingface": "dataset split"}
    missing = [key for key in needed[spec.kind].split() if getattr(spec, key) is None]
    if missing:
        raise DataError(f"a corpus of kind {spec.kind!r} needs {', '.join(missing)}")
    if spec.kind == "huggingface":
        return load_hf_dataset(
            spec.dataset,
            spec.subset,
            spec.split,
            spec.source_lang,
            spec.target_lang,
            spec.limit,
        )
    if spec.kind == "aligned":
        source, target = (
            resolve_path(spec.source, root),
            resolve_path(spec.target, root),
        )
        corpus = read_aligned_files(source, target)
    else:
        corpus = read_tsv_pairs(resolve_path(spec.path, root), spec.split)
    if spec.limit is not None:
        corpus.sources = corpus.sources[: spec.limit]
        corpus.targets = corpus.targets[: spec.limit]
    return corpus


def clean_corpus(
    corpus: ParallelCorpus, max_length_ratio: float = 9.0
) -> tuple[ParallelCorpus, dict[str, int]]:
    """Skips pairs with an empty side or a character-length ratio above the limit.

    Returns:
        The kept pairs (in order) and the count of skipped pairs by reason,
        ``{"empty": n, "length_ratio": m}``. One warning sums them up.
    """
    skipped = {"empty": 0, "length_ratio": 0}
    sources, targets = [], []
    for source, target in zip(corpus.sources, corpus.targets, strict=True):
        shorter, longer = sorted((len(source), len(target)))
        if shorter == 0:
            skipped["empty"] += 1
        elif longer / shorter > max_length_ratio:
            skipped["length_ratio"] += 1
        else:
            sources.append(source)
            targets.append(target)
    if any(skipped.values()):
        warnings.warn(
            f"{corpus.name}: skipped {sum(skipped.values())} of {len(corpus)} pairs "
            f"({skipped['empty']} with an empty side, {skipped['length_ratio']} with "
            f"a length ratio above {max_length_ratio})",
            stacklevel=2,
        )
    return ParallelCorpus(sources, targets, corpus.name), skipped


def _cut_batches(
    order: Sequence[int], lengths: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """Cuts ``order`` greedily into batches of ``len(batch) · max length ≤ max_tokens``.

    An example longer than ``max_tokens`` goes alone in its batch.

    >>> _cut_batches([0, 1, 2, 3], [2, 3, 3, 9], max_tokens=8)
    [[0, 1], [2], [3]]
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0
    for index in order:
        longest = max(longest, lengths[index])
        if batch and (len(batch) + 1) * longest > max_tokens:
            batches.append(batch)
            batch, longest = [], lengths[index]
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


class EpochBatchSampler:
    """The resumable, shardable part of a batch sampler; subclasses cut the batches.

    A subclass sets ``self._length`` (batches per rank and epoch, the same every
    epoch) and implements :meth:`_all_batches` (the epoch's batches for all ranks,
    seeded by ``(seed, epoch)``, never by global RNG state).

    Distributed: every rank computes the same epoch's batch list, truncated to a
    multiple of ``world_size``; rank ``r`` takes batches ``r, r + W, r + 2W, ...``.
    So step ``i`` of rank ``r`` is batch ``i · W + r`` of the list, and the one-rank
    epoch's batch ``j`` is rank ``j % W``'s step ``j // W``, for the ``W · len(self)``
    batches that survive truncation.

    Resume: :meth:`state_dict` counts the batches this rank has yielded in the
    current epoch, and iterating after :meth:`load_state_dict` goes on with the next
    one. The count is taken when a batch is handed out, so with
    ``DataLoader(num_workers > 0)``, which fetches batches ahead, save the number of
    batches the training loop has consumed instead.
    """

    _length: int
    world_size: int
    rank: int
    epoch: int = 0
    batches_done: int = 0

    def _all_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()[: self._length * self.world_size]
        mine = batches[self.rank :: self.world_size]
        while self.batches_done < len(mine):
            self.batches_done += 1  # before the yield: the caller now holds it
            yield mine[self.batches_done - 1]
        self.batches_done = 0

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch``; the epoch it is already in keeps its position (resume)."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not 0 <= state["batches_done"] <= self._length:
            raise ValueError(
                f"batches_done={state['batches_done']} but an epoch has "
                f"{self._length} batches; was the state saved with other data?"
            )
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])


class TokenBatchSampler(EpochBatchSampler):
    """Batches of similar-length examples, at most ``max_tokens`` padded tokens each.

    A batch costs ``len(batch) · max(longest source, longest target)``; pass lengths
    as they will be in the tensors (count BOS/EOS). Each epoch, indices are shuffled
    (so that equal lengths come in random order), sorted by (source, target) length,
    cut greedily into batches, and the batches are shuffled; everything is seeded by
    ``(seed, epoch)``, never by global RNG state. ``shuffle=False`` gives a fixed
    order, sorted by length, for validation. Sharding and resume: see
    :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        source_lengths: Sequence[int],
        target_lengths: Sequence[int],
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if max_tokens < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need max_tokens >= 1 and 0 <= rank < world_size; got "
                f"max_tokens={max_tokens}, rank={rank}, world_size={world_size}"
            )
        self.pair_lengths = list(zip(source_lengths, target_lengths, strict=True))
        self.lengths = [max(pair) for pair in self.pair_lengths]
        self.max_tokens = max_tokens
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batches_done = 0
        # The sorted length sequence, hence the number of batches, is the same every
        # epoch: only the order of equal lengths and of the batches changes.
        self._length = len(self._all_batches()) // world_size

    def _all_batches(self) -> list[list[int]]:
        """The epoch's batches for all ranks, before truncation."""
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        # A stable sort keeps the shuffled order among equal lengths.
        order.sort(key=self.pair_lengths.__getitem__)
        batches = _cut_batches(order, self.lengths, self.max_tokens)
        if self.shuffle:
            rng.shuffle(batches)
        return batches


@dataclass
class Batch:
    """Padded token ids for one training or validation step.

    Attributes:
        source_ids: ``(b, s_src)`` long, PAD-padded.
        source_mask: ``(b, s_src)`` bool, True for real tokens.
        target_input: ``(b, s_tgt)`` BOS + target tokens, PAD-padded (decoder input).
        target_output: ``(b, s_tgt)`` target tokens + EOS, PAD-padded (the labels).
        target_mask: ``(b, s_tgt)`` bool, True where ``target_input`` (equally,
            ``target_output``) is real.
    """

    source_ids: Tensor
    source_mask: Tensor
    target_input: Tensor
    target_output: Tensor
    target_mask: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        tensors = (getattr(self, field.name) for field in fields(self))
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in tensors))

    @property
    def source_tokens(self) -> int:
        return int(self.source_mask.sum())

    @property
    def target_tokens(self) -> int:
        return int(self.target_mask.sum())


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pads rows into ``(b, longest)`` long ids and a True-for-real mask."""
    lengths = torch.tensor([len(row) for row in rows])
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    # From the lengths, not ids != pad_id: a real token is never mistaken for PAD.
    mask = torch.arange(ids.size(1)) < lengths.unsqueeze(1)
    return ids, mask


def collate(
    source_ids: Sequence[Sequence[int]],
    target_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    bos_id: int,
    eos_id: int,
) -> Batch:
    """Pads a batch of token id lists (without BOS/EOS) into a :class:`Batch`.

    ``s_src`` is the longest source; ``s_tgt`` is the longest target plus one (BOS
    in the decoder input, EOS in the labels).

    >>> batch = collate([[5, 6], [7]], [[8], [9, 10]], pad_id=0, bos_id=1, eos_id=2)
    >>> batch.target_input
    tensor([[ 1,  8,  0],
            [ 1,  9, 10]])
    >>> batch.target_output
    tensor([[ 8,  2,  0],
            [ 9, 10,  2]])
    >>> batch.source_mask.int()
    tensor([[1, 1],
            [1, 0]], dtype=torch.int32)
    """
    if len(source_ids) != len(target_ids) or not source_ids:
        raise ValueError(
            f"need as many sources as targets, at least one; got {len(source_ids)} "
            f"and {len(target_ids)}"
        )
    sources, source_mask = _pad(source_ids, pad_id)
    target_input, target_mask = _pad([[bos_id, *row] for row in target_ids], pad_id)
    target_output, _ = _pad([[*row, eos_id] for row in target_ids], pad_id)
    return Batch(sources, source_mask, target_input, target_output, target_mask)
