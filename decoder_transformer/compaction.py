"""Rows leaving a batch of caches, by moving a few rows instead of gathering all.

Greedy search drops the sentences that have finished; beam search drops the source
rows of finished sentences. Gathering the kept rows (``reorder``) copies every one of
them; :class:`Compaction` moves only the last kept rows into the places of the
leaving ones, copying as many rows as left, and records the order this leaves the
kept rows in so that the search can reorder its own tensors alike.

Shapes: ``b`` rows before, ``b_new`` rows kept, ``m`` rows moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Compaction:
    """Rows leaving a batch, by moving the last kept rows into the leaving rows' places.

    Gathering the kept rows (``reorder``) copies every one of them; when a few rows
    of many leave (sentences that finished), moving just the last kept rows into the
    places of the leaving ones copies as many rows as left. The kept rows change
    order, which ``order`` records: compacting a tensor gives what
    ``tensor.index_select(0, order)`` would.

    Attributes:
        order: ``(b_new,)`` the old row of each new row.
        sources: ``(m,)`` kept rows at ``b_new`` or beyond, which move ...
        destinations: ``(m,)`` ... into these places of leaving rows below ``b_new``.

    >>> moves = Compaction.keeping(torch.tensor([True, False, True, True, False, True]))
    >>> moves.order.tolist(), moves.sources.tolist(), moves.destinations.tolist()
    ([0, 5, 2, 3], [5], [1])
    """

    order: Tensor
    sources: Tensor
    destinations: Tensor

    @classmethod
    def keeping(cls, keep: Tensor) -> Compaction:
        """The compaction that keeps the rows where ``keep`` (``(b,)`` bool) is True."""
        rows = int(keep.sum())
        destinations = (~keep[:rows]).nonzero().squeeze(1)
        sources = keep[rows:].nonzero().squeeze(1) + rows
        order = torch.arange(rows, device=keep.device)
        order[destinations] = sources
        return cls(order, sources, destinations)

    @property
    def rows(self) -> int:
        """Rows kept, ``b_new``."""
        return self.order.size(0)

    def apply_(self, tensor: Tensor) -> Tensor:
        """Moves the rows of ``tensor`` in place; returns its first ``b_new`` (a view).

        Only for tensors the caller owns: the leaving rows are overwritten.
        """
        tensor.index_copy_(0, self.destinations, tensor.index_select(0, self.sources))
        return tensor[: self.rows]
