"""Text generation with the GPT: continue a prompt one sampled token at a time.

The prompt is read in one pass that fills the KV cache; after that, each step feeds
only the newest token, attends to the cached keys and values, and draws the next
token with :func:`~machine_translation.search.sample_next_tokens` (temperature,
top-k, top-p; temperature 0 is greedy).

The model was trained on windows of ``max_positions`` tokens, so it never learned to
read further back. When the cache is full, generation keeps the newest half of the
tokens and reads them again into a fresh cache (nanoGPT instead recomputes a full
window at every step). Until the first refill this gives exactly the outputs of full
recomputation; after it, a token sees between half a window and a full window of
context instead of always a full one, for a fraction of the compute.

Shapes: ``n`` samples, ``s`` tokens, ``v`` vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from decoder_transformer.gpt import GPT
from machine_translation.inference.sampling import Sampling, sample_next_tokens
from machine_translation.runtime.devices import autocast


@torch.inference_mode()
def generate(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: Sampling,
    *,
    num_samples: int = 1,
    banned_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
    precision: str = "fp32",
) -> list[list[int]]:
    """Continues ``prompt_ids`` ``num_samples`` times.

    Args:
        model: The GPT, in eval mode, on the device where generation runs.
        prompt_ids: The prompt's token ids (at least one; the newest
            ``max_positions - 1`` are read if it is longer).
        max_new_tokens: Tokens to generate after the prompt.
        sampling: How each token is drawn (temperature 0: greedy).
        num_samples: Independent continuations, generated as one batch.
        banned_ids: Tokens never generated (e.g. PAD, BOS, EOS, UNK).
        generator: Random generator on the model's device, for reproducibility.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).

    Returns:
        The ``num_samples`` lists of new token ids (without the prompt).

    Raises:
        ValueError: an empty prompt, or a count below its minimum.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0 or num_samples < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} must be >= 0 and "
            f"num_samples={num_samples} >= 1"
        )
    device = next(model.parameters()).device
    window = model.config.max_positions
    tokens = torch.tensor(prompt_ids[-(window - 1) :], device=device)
    tokens = tokens.unsqueeze(0).repeat(num_samples, 1)  # (n, s)
    new_tokens: list[Tensor] = []
    with autocast(device, precision):
        cache = model.new_cache(capacity=window)
        logits = model.step(tokens, cache)[:, -1]  # (n, v)
        for _ in range(max_new_tokens):
            logits = logits.float()
            if banned_ids:
                logits[:, list(banned_ids)] = float("-inf")
            chosen = sample_next_tokens(logits, sampling, generator)  # (n,)
            new_tokens.append(chosen)
            tokens = torch.cat([tokens, chosen.unsqueeze(1)], dim=1)
            if cache.length + 1 <= window:
                logits = model.step(chosen.unsqueeze(1), cache)[:, -1]
            else:  # the window is full: re-read its newest half into a new cache
                cache = model.new_cache(capacity=window)
                logits = model.step(tokens[:, -(window // 2) :], cache)[:, -1]
    if not new_tokens:
        return [[] for _ in range(num_samples)]
    return torch.stack(new_tokens, dim=1).tolist()
