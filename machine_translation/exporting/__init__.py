"""Exporting a trained translation model to where users deploy models.

- :mod:`.hf_model`: our weights as a Hugging Face ``transformers`` model (Pegasus)
  and the directory ``from_pretrained`` loads, tokenizer included.
- :mod:`.hf_tokenizer`: our BPE tokenizer as a ``PreTrainedTokenizerFast``.
- :mod:`.ctranslate2_model`: that directory converted by CTranslate2's own converter.

``transformers`` and ``ctranslate2`` are an optional extra (``pip install -e
'.[export]'``); nothing else in the toolkit imports this package.
"""
