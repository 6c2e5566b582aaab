"""From token ids to the first hidden states: look up, scale, add positions, dropout.

The encoder, the decoder and the GPT all begin the same way, so this is written once.
Several stacks may share one ``nn.Embedding`` (a joint vocabulary with tied weights):
each stack wraps the shared table in its own ``TransformerEmbedding``.

Shapes: ``b`` batch, ``s`` sequence, ``d`` d_model, ``v`` vocabulary.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from encoder_transformer.config import TransformerConfig
from encoder_transformer.dropout import Dropout
from encoder_transformer.positional import build_additive_positions


def build_token_embedding(vocab_size: int, d_model: int, pad_id: int) -> nn.Embedding:
    """A ``(v, d)`` table with rows drawn from N(0, 1/d) and a PAD row starting at zero.

    With this spread, an embedding scaled by √d has unit-variance entries, and the same
    matrix used as the LM head gives logits of order one at initialization.
    ``padding_idx`` keeps the lookup of PAD from sending gradient to its row; a tied LM
    head still updates it (PAD is never a training label, so only towards "not PAD").
    """
    embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
    nn.init.normal_(embedding.weight, std=d_model**-0.5)
    embedding.weight.data[pad_id].zero_()
    return embedding


class TransformerEmbedding(nn.Module):
    """Token ids ``(b, s)`` → hidden states ``(b, s, d)``.

    Args:
        config: Supplies ``d_model``, ``scale_embeddings``, ``positions``,
            ``max_positions`` and ``dropout``.
        token_embedding: The ``(v, d)`` table, possibly shared with other stacks.
    """

    def __init__(self, config: TransformerConfig, token_embedding: nn.Embedding):
        super().__init__()
        self.tokens = token_embedding
        self.scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self.positions = build_additive_positions(
            config.positions, config.d_model, config.max_positions
        )
        self.dropout = Dropout(config.dropout)

    def forward(self, token_ids: Tensor, offset: int = 0) -> Tensor:
        """Embeds ``(b, s)`` ids whose first token is at position ``offset``."""
        hidden_states = self.tokens(token_ids) * self.scale
        if self.positions is not None:
            hidden_states = self.positions(hidden_states, offset)
        return self.dropout(hidden_states)
