"""Our BPE tokenizer as a ``transformers`` tokenizer, so no project code is needed.

The tokenizer's JSON (normalizer, byte-level pre-tokenizer, merges, decoder) is
already the ``tokenizers`` library's format, which ``PreTrainedTokenizerFast`` wraps.
What the wrapper adds is set here:

- the special tokens at ids 0-3 (``<pad>``, ``<s>``, ``</s>``, ``<unk>``);
- no special tokens around a source: our encoder reads the bare token ids (no BOS or
  EOS), and the JSON has no post-processor, so ``encode`` gives exactly our ids;
- ``split_special_tokens``: text such as ``"<s>"`` typed in a sentence is encoded as
  the characters it is, as ours does (``encode_special_tokens``);
- ``clean_up_tokenization_spaces=False``: ``transformers``' clean-up would delete the
  space before ``?`` and ``!`` that French writes (``"Où est la gare ?"``).
"""

from __future__ import annotations

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from machine_translation.data.bpe_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    BPETokenizer,
)


def to_transformers_tokenizer(
    tokenizer: BPETokenizer, max_length: int
) -> PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer that encodes and decodes as ``tokenizer``.

    Args:
        tokenizer: The model's tokenizer.
        max_length: The longest input the model reads (``max_positions``).
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.to_json()),
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
    )
