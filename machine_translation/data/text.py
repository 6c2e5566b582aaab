"""Plain text for the GPT mode: one long token stream cut into training windows.

A language model learns ``p(x_t | x_<t)`` on a single stream of text. The text is read
from a file (plain or gzip) or a Hugging Face Hub dataset (a ``text`` column), split
into a training head and a validation tail (the classic 90/10 split of Tiny
Shakespeare: the last 10% of the characters), and tokenized once.

Training examples are windows of ``block_size + 1`` tokens: the model reads the first
``block_size`` and predicts the last ``block_size`` (each token's successor).
:class:`BlockSampler` cuts an epoch's windows at a random offset, shuffles them and
groups them into batches, seeded by ``(seed, epoch)`` so that a resumed run continues
with the very same batches. Validation reads the tail once, in consecutive windows.

Shapes: ``b`` batch, ``s`` block size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from machine_translation.data.batching import EpochBatchSampler
from machine_translation.data.corpus import DataError
from machine_translation.data.readers import hub_error, read_lines, resolve_path


def read_text(path: str | Path, root: Path | None = None) -> str:
    """The whole text of a UTF-8 file (gzip when it ends in ``.gz``).

    Raises:
        DataError: a missing, unreadable or non-UTF-8 file, or an empty one.
    """
    path = resolve_path(str(path), root)
    text = "\n".join(read_lines(path))
    if not text.strip():
        raise DataError(f"{path}: the file holds no text")
    return text


def load_hf_text(
    dataset: str, subset: str | None, split: str, column: str = "text"
) -> str:
    """A Hub dataset's ``column`` joined by newlines into one text.

    Raises:
        DataError: one line naming the dataset when it cannot be fetched or has no
            such column.
    """
    label = f"{dataset!r}" + (f" ({subset})" if subset else "")
    try:
        import datasets  # slow to import: only those who use the Hub pay for it

        data = datasets.load_dataset(dataset, subset, split=split)
    except Exception as error:  # any failure to fetch, whatever library raised it
        raise hub_error(label, split, error, "a local text file (data.path)") from None
    if column not in data.column_names:
        raise DataError(
            f"Hugging Face dataset {label} has no {column!r} column (it has "
            f"{data.column_names}); set data.hf_column"
        )
    return "\n".join(data[column])


def split_text(text: str, valid_fraction: float) -> tuple[str, str]:
    """The first ``1 - valid_fraction`` of the characters, and the rest.

    Raises:
        ValueError: ``valid_fraction`` is not in (0, 1).

    >>> split_text("abcdefghij", 0.2)
    ('abcdefgh', 'ij')
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction={valid_fraction} must be in (0, 1)")
    cut = round(len(text) * (1.0 - valid_fraction))
    return text[:cut], text[cut:]


@dataclass
class TextBatch:
    """Windows of a token stream; ``targets`` is ``inputs`` shifted by one.

    Attributes:
        inputs: ``(b, s)`` token ids the model reads.
        targets: ``(b, s)`` the token that follows each input token.
    """

    inputs: Tensor
    targets: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TextBatch:
        return TextBatch(
            self.inputs.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
        )

    @property
    def tokens(self) -> int:
        return self.targets.numel()


def windows(stream: Tensor, starts: list[int], block_size: int) -> TextBatch:
    """The windows of ``stream`` beginning at ``starts``, as a batch.

    >>> batch = windows(torch.arange(10), [0, 5], 3)
    >>> batch.inputs.tolist(), batch.targets.tolist()
    ([[0, 1, 2], [5, 6, 7]], [[1, 2, 3], [6, 7, 8]])
    """
    rows = torch.stack([stream[start : start + block_size + 1] for start in starts])
    return TextBatch(rows[:, :-1], rows[:, 1:])


class BlockSampler(EpochBatchSampler):
    """Start positions of training windows, ``batch_size`` per batch, resumable.

    Each epoch draws an offset in ``[0, block_size)`` and cuts the stream into
    consecutive windows from there, so that over epochs windows start everywhere;
    the windows are shuffled and grouped into batches. Everything is seeded by
    ``(seed, epoch)``. Sharding and resume: see :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        stream_length: int,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if block_size < 1 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need block_size, batch_size >= 1 and 0 <= rank < world_size; got "
                f"{block_size}, {batch_size}, rank={rank}, world_size={world_size}"
            )
        # The last offset must still leave one full window (block_size + 1 tokens).
        if stream_length < 2 * block_size + 1:
            raise DataError(
                f"the training text has {stream_length} tokens, too few for windows "
                f"of {block_size}: use a longer text or a smaller data.block_size"
            )
        self.stream_length, self.block_size = stream_length, block_size
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batches_done = 0
        # The window count is that of the largest offset, so every epoch has as many.
        windows_per_epoch = (stream_length - block_size) // block_size
        self._length = windows_per_epoch // batch_size // world_size
        if self._length == 0:
            raise DataError(
                f"{windows_per_epoch} windows of {block_size} tokens do not fill one "
                f"batch of {batch_size} per process: lower data.batch_size"
            )

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        offset = rng.randrange(self.block_size)
        starts = list(
            range(offset, self.stream_length - self.block_size, self.block_size)
        )
        rng.shuffle(starts)
        count = self._length * self.world_size
        return [
            starts[i * self.batch_size : (i + 1) * self.batch_size]
            for i in range(count)
        ]
