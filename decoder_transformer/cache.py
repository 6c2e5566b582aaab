"""The caches of a whole decoder stack, that make decoding cost O(s) per token.

A decoder generates one token at a time. Without a cache, step t recomputes the keys
and values of all t earlier tokens in every layer, although they never change (causal
attention: a token never sees later ones). :class:`DecoderCache` holds one cache per
layer for self-attention (a :class:`~decoder_transformer.kv_cache.KeyValueCache`, or
a :class:`~decoder_transformer.latent_cache.LatentCache` for latent attention) and,
in an encoder-decoder, one per layer for cross-attention, whose keys and values the
first step projects from the fixed source and later steps read back.

Beam search keeps several hypotheses per sentence and, after each step, continues each
surviving one from its parent beam; ``reorder`` gathers every cache along the batch by
those parent indices, so each row again holds the history of the hypothesis it
continues (and drops sentences that have finished). When only a few rows leave and
the others keep their histories (greedy search, or the source rows of beam search),
``compact`` moves the last kept rows into the places of the leaving ones instead
(:class:`~decoder_transformer.compaction.Compaction`), copying as many rows as left
rather than all of them.

Shapes: ``b`` batch, ``b_new`` rows kept.
"""

from __future__ import annotations

from torch import Tensor

from decoder_transformer.compaction import Compaction
from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache


class DecoderCache:
    """The caches of a decoder stack: self- and cross-attention, one per layer.

    Args:
        n_layers: Decoder blocks.
        cross_attention: Whether the blocks attend to an encoder (False for a GPT).
        capacity: Target positions to preallocate in the self-attention caches
            (e.g. the longest output a search allows), or None to grow as needed.
        latent: Whether self-attention is latent attention (MLA), which caches
            latents (:class:`LatentCache`) instead of keys and values.
    """

    def __init__(
        self,
        n_layers: int,
        cross_attention: bool = True,
        capacity: int | None = None,
        latent: bool = False,
    ) -> None:
        self_attention_cache = LatentCache if latent else KeyValueCache
        self.self_attention: list[KeyValueCache] | list[LatentCache] = [
            self_attention_cache(capacity) for _ in range(n_layers)
        ]
        self.cross_attention = (
            [KeyValueCache() for _ in range(n_layers)] if cross_attention else None
        )

    @property
    def length(self) -> int:
        """Target positions decoded so far (the position of the next token)."""
        return self.self_attention[0].length

    def reorder(self, indices: Tensor) -> None:
        """Gathers every layer's cache along the batch: row i becomes row indices[i].

        Args:
            indices: ``(b_new,)`` long tensor of rows to keep, e.g. the sentences
                still decoding; ``b_new`` may be smaller than ``b``.
        """
        self.reorder_self_attention(indices)
        self.reorder_cross_attention(indices)

    def compact(self, compaction: Compaction) -> None:
        """Keeps rows ``compaction.order`` of every cache, moving only the few.

        The same result as ``reorder(compaction.order)``, for rows that leave
        (e.g. finished sentences) while the others keep their histories.
        """
        for cache in self.self_attention:
            cache.compact(compaction)
        self.compact_cross_attention(compaction)

    def reorder_self_attention(self, indices: Tensor) -> None:
        """Gathers the self-attention caches only (the target histories).

        Beam search does this at every step, with the parent beam of each new
        hypothesis, while the cross-attention caches keep one row per source.
        """
        for cache in self.self_attention:
            cache.reorder(indices)

    def reorder_cross_attention(self, indices: Tensor) -> None:
        """Gathers the cross-attention caches only (the source keys and values)."""
        for cache in self.cross_attention or []:
            cache.reorder(indices)

    def compact_cross_attention(self, compaction: Compaction) -> None:
        """Compacts the cross-attention caches only (sentences leaving beam search)."""
        for cache in self.cross_attention or []:
            cache.compact(compaction)
