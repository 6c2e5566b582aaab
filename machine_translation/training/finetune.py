"""Fine-tuning a trained translation model on another corpus: LoRA or every weight.

    python -m machine_translation.train +experiment=lora_tatoeba \
        finetune.base=runs/multi30k/<run>/checkpoints/best.pt lora.rank=8

``finetune.base`` names the checkpoint to start from. Its architecture and tokenizer
are used as they are (no new BPE; ``model.*`` and ``data.vocab_size`` are ignored),
and the same training loop runs, with resume and Ctrl+C as usual. With
``finetune.method=lora`` (the default) the base is frozen and only LoRA adapters
(:mod:`encoder_transformer.lora`, configured by ``lora.*``) train; with ``full`` every
weight does, and checkpoints are ordinary full ones.

**Adapter checkpoints.** A LoRA run's ``best.pt`` and ``last.pt`` hold only the
adapters' weights (``model``), with ``adapter``: the LoRA config and a reference to
the base, its absolute path and a *fingerprint* (SHA-256 of its weights). The file
is a few hundred KB instead of tens of MB (``last.pt`` adds the optimizer state of
the adapters alone). Loading it onto any other base fails with a
:class:`CheckpointError` instead of silently producing nonsense.

**Inference** (:func:`load_adapted_model`) loads the base, attaches the adapters and
merges them into its weights, so that the model decodes at the base's speed;
``translate`` and ``evaluate`` accept an adapter checkpoint wherever they accept a
checkpoint, or ``--adapter PATH`` on top of ``--checkpoint BASE``.
``python -m machine_translation.merge_adapter`` writes the merged model as an
ordinary checkpoint.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from encoder_transformer.lora import (
    LoRAConfig,
    add_lora,
    load_lora_state_dict,
    lora_state_dict,
)
from machine_translation.checkpoints.adapters import (
    check_base,
    is_adapter_checkpoint,
    weights_fingerprint,
)
from machine_translation.checkpoints.files import (
    CheckpointError,
    load_checkpoint,
)
from machine_translation.config.compose import build_model_config
from machine_translation.config.schema import TrainConfig
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.model import Seq2SeqTransformer, count_parameters
from machine_translation.training.translation_task import TranslationTask

logger = logging.getLogger("machine_translation")


METHODS = ("lora", "full")


class AdapterTranslationTask(TranslationTask):
    """Translation training whose checkpoints keep only the LoRA adapters.

    Args:
        *args, **kwargs: Those of :class:`TranslationTask`.
        adapter: The checkpoint's ``adapter`` entry (LoRA config, base reference).
    """

    def __init__(self, *args: Any, adapter: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter = adapter

    def model_state_dict(self) -> dict[str, Tensor]:
        return lora_state_dict(self.model)

    def load_model_state_dict(self, state: Mapping[str, Tensor]) -> None:
        load_lora_state_dict(self.model, state)

    def checkpoint_payload(self) -> dict[str, Any]:
        # No tokenizer: the base's is the one, and the fingerprint guarantees it.
        return {"model_config": self.model.config.to_dict(), "adapter": self.adapter}


class FineTuning:
    """Where a fine-tuning run starts: a base checkpoint, and LoRA or full training.

    Build it with :meth:`from_config`; ``train`` then takes the tokenizer, the model
    and the task type from it.
    """

    def __init__(
        self, base_path: Path, base: dict[str, Any], lora: LoRAConfig | None
    ) -> None:
        self.base_path, self.base, self.lora = base_path, base, lora
        self.fingerprint = weights_fingerprint(base["model"])

    @classmethod
    def from_config(
        cls, config: TrainConfig, resume: Mapping[str, Any] | None = None
    ) -> FineTuning | None:
        """The fine-tuning that ``config.finetune`` asks for; None to train anew.

        Args:
            config: The run's config (``finetune``, ``lora``).
            resume: The checkpoint the run resumes from, if any: it must be of the
                same kind (adapters of the same base and LoRA config, or full).

        Raises:
            ValueError: a bad ``finetune.method`` or ``lora`` setting.
            CheckpointError: an unusable base, or a resume checkpoint that does not
                continue this fine-tuning.
        """
        settings = config.finetune
        if settings.method not in (None, *METHODS):
            raise ValueError(
                f"finetune.method={settings.method!r} is not one of {METHODS}"
            )
        if not settings.base:
            if settings.method is not None:
                raise ValueError(
                    f"finetune.method={settings.method} needs finetune.base=PATH, "
                    "the checkpoint to fine-tune"
                )
            if resume is not None and is_adapter_checkpoint(resume):
                raise CheckpointError(
                    "the checkpoint to resume holds LoRA adapters: resume with the "
                    "same finetune.base and lora settings as the run"
                )
            return None
        method = settings.method or "lora"
        lora = LoRAConfig.from_dict(config.lora) if method == "lora" else None
        base_path = Path(settings.base).resolve()
        base = load_checkpoint(base_path)
        if is_adapter_checkpoint(base):
            raise CheckpointError(
                f"{base_path} holds LoRA adapters, not a model: merge it first "
                "(python -m machine_translation.merge_adapter) and fine-tune that"
            )
        if base.get("task", "translation") != "translation" or "tokenizer" not in base:
            raise CheckpointError(f"{base_path} is not a translation model checkpoint")
        fine_tuning = cls(base_path, base, lora)
        if resume is not None:
            fine_tuning.check_resume(resume)
        return fine_tuning

    def check_resume(self, resume: Mapping[str, Any]) -> None:
        """Raises a CheckpointError unless ``resume`` continues this fine-tuning."""
        if self.lora is None:
            if is_adapter_checkpoint(resume):
                raise CheckpointError(
                    "the checkpoint to resume holds LoRA adapters, but "
                    "finetune.method=full"
                )
            return
        if not is_adapter_checkpoint(resume):
            raise CheckpointError(
                "the checkpoint to resume holds a whole model, but finetune.method "
                "is lora"
            )
        check_base(resume["adapter"], self.fingerprint, self.base_path)
        recorded = LoRAConfig.from_dict(resume["adapter"]["lora"])
        if recorded != self.lora:
            raise CheckpointError(
                f"the run to resume trained {describe(recorded)}; this config asks for "
                f"{describe(self.lora)}: resume with the same lora settings"
            )

    @property
    def tokenizer(self) -> BPETokenizer:
        """The base's tokenizer: the model's embeddings are indexed by its ids."""
        return BPETokenizer.from_json(self.base["tokenizer"])

    @property
    def adapter_record(self) -> dict[str, Any]:
        """The ``adapter`` entry of this run's checkpoints."""
        assert self.lora is not None
        return {
            "lora": self.lora.to_dict(),
            "base": {"path": str(self.base_path), "fingerprint": self.fingerprint},
        }

    def build_model(self) -> Seq2SeqTransformer:
        """The base model with its weights; with LoRA, adapters and a frozen base."""
        model = Seq2SeqTransformer(build_model_config(self.base["model_config"]))
        model.load_state_dict(self.base["model"])
        total = count_parameters(model)
        if self.lora is not None:
            add_lora(model, self.lora)
        trainable = count_parameters(model)
        logger.info(
            "fine-tuning %s (%s): %s of its %s parameters train (%.2f%%)",
            self.base_path,
            "full" if self.lora is None else describe(self.lora),
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )
        return model

    @property
    def task_type(self) -> Callable[..., TranslationTask]:
        """Builds the run's task from :class:`TranslationTask`'s arguments."""
        if self.lora is None:
            return TranslationTask
        return functools.partial(AdapterTranslationTask, adapter=self.adapter_record)


def describe(lora: LoRAConfig) -> str:
    """``LoRA r=8, alpha=16 on q,v (both)``."""
    targets = ",".join(lora.targets)
    return f"LoRA r={lora.rank}, alpha={lora.alpha:g} on {targets} ({lora.where})"
