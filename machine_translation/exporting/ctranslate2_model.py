"""Our translation model as a CTranslate2 model, by CTranslate2's own converter.

The model is first written as a ``transformers`` directory
(:func:`~machine_translation.exporting.hf_model.save_transformers`), which
``ctranslate2.converters.TransformersConverter`` reads as any Pegasus model from the
Hub, quantizing the weights as asked. Its Pegasus loader takes ``<pad>`` as the
decoder's first token (Pegasus's convention); ours starts from ``<s>``, so the
converted model's ``config.json`` is given ``<s>`` instead, the one change made
after the converter. The tokenizer files are copied beside the model, so a user
encodes with ``transformers``' tokenizer and translates token strings:

    tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text))
    result = translator.translate_batch([tokens])[0].hypotheses[0]
    text = tokenizer.decode(tokenizer.convert_tokens_to_ids(result))
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from machine_translation.data.bpe_tokenizer import BOS_TOKEN, BPETokenizer
from machine_translation.exporting.hf_model import save_transformers
from machine_translation.model import Seq2SeqTransformer

QUANTIZATIONS = ("int8", "int8_float32", "float32")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def save_ctranslate2(
    model: Seq2SeqTransformer,
    tokenizer: BPETokenizer,
    directory: str | Path,
    quantization: str = "int8",
) -> Path:
    """Writes a CTranslate2 model directory with the tokenizer beside it.

    Args:
        model: The translation model.
        tokenizer: Its tokenizer.
        directory: Where to write (created; files already there are replaced).
        quantization: How the weights are stored: ``int8`` (8-bit weights, int8
            matrix products on CPU), ``int8_float32`` (the same, with the other
            weights in float32) or ``float32``.

    Raises:
        ExportError: ``model`` uses an option the target cannot express.
        ValueError: an unknown ``quantization``.
    """
    from ctranslate2.converters import TransformersConverter

    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization={quantization!r} is not one of {', '.join(QUANTIZATIONS)}"
        )
    directory = Path(directory)
    with tempfile.TemporaryDirectory() as staging:
        save_transformers(model, tokenizer, staging)
        converter = TransformersConverter(staging, copy_files=list(TOKENIZER_FILES))
        converter.convert(str(directory), quantization=quantization, force=True)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["decoder_start_token"] = config["bos_token"] = BOS_TOKEN
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory
