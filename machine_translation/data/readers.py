"""Reading corpora: line-aligned files, TSV pairs (Tatoeba's fixed split), Hub
datasets.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

from machine_translation.data.corpus import (
    SPLITS,
    CorpusSpec,
    DataError,
    ParallelCorpus,
)


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
        corpus = load_hf_dataset(
            spec.dataset,
            spec.subset,
            spec.split,
            spec.source_lang,
            spec.target_lang,
            spec.limit,
        )
    elif spec.kind == "aligned":
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
    if spec.repeat > 1:  # shown more often: as if the corpus were that much larger
        corpus.sources = corpus.sources * spec.repeat
        corpus.targets = corpus.targets * spec.repeat
    return corpus
