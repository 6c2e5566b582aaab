"""Batches of similar-length sentences, reshuffled each epoch, padded into tensors."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor


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
