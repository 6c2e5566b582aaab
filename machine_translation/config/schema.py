"""From configuration files to the typed dataclasses the library receives.

Hydra and OmegaConf stop here: the model packages only ever see a
:class:`~encoder_transformer.config.TransformerConfig`, the training code the
dataclasses below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from machine_translation.data.corpus import CorpusSpec


def check_ranges(section: str, config: Any, **bounds: tuple[float, float]) -> None:
    """Raises ValueError naming the first field outside its ``(low, high)`` bounds
    (inclusive; None values are "off" and pass).

    >>> check_ranges("trainer", TrainerConfig(), eval_every=(10, 20))
    Traceback (most recent call last):
    ...
    ValueError: trainer.eval_every=300: must be between 10 and 20
    """
    for name, (low, high) in bounds.items():
        value = getattr(config, name)
        if value is not None and not low <= value <= high:
            where = (
                f"at least {low:g}" if high == INF else f"between {low:g} and {high:g}"
            )
            raise ValueError(f"{section}.{name}={value}: must be {where}")


INF = float("inf")


@dataclass
class AugmentConfig:
    """Training pairs shown typed casually (``data.augment``; see
    :mod:`machine_translation.data.augmentation`).

    >>> AugmentConfig(lowercase_source=0.8, uppercase=0.3)
    Traceback (most recent call last):
    ...
    ValueError: data.augment: the case changes' probabilities add up to 1.15 > 1
    """

    fraction: float = 0.3  # of the training pairs each epoch; 0 = off
    drop_final_punctuation: float = 0.9  # of those: both sides lose the final stop
    lowercase_source: float = 0.5  # one case change each: source lower-cased,
    uppercase: float = 0.05  # both sides upper-cased,
    titlecase_source: float = 0.05  # or source title-cased (else case kept)

    def __post_init__(self) -> None:
        for name in (
            "fraction",
            "drop_final_punctuation",
            "lowercase_source",
            "uppercase",
            "titlecase_source",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"data.augment.{name}={value}: must be in [0, 1]")
        cases = self.lowercase_source + self.uppercase + self.titlecase_source
        if cases > 1.0 + 1e-9:
            raise ValueError(
                f"data.augment: the case changes' probabilities add up to {cases:g} > 1"
            )


@dataclass
class DataConfig:
    """Corpora, tokenizer size and batching (``conf/data/*.yaml``)."""

    train: list[CorpusSpec] = field(default_factory=list)
    valid: list[CorpusSpec] = field(default_factory=list)
    vocab_size: int = 8000  # joint BPE vocabulary trained on the training text
    max_tokens: int = 4096  # per batch: sentences × longest side, padding included
    max_source_length: int = 128  # tokens; longer training pairs are skipped
    max_target_length: int = 128
    max_length_ratio: float = 9.0  # characters, longer side / shorter side
    valid_bleu_sentences: int = 500  # greedy-decoded for BLEU at each validation
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_ranges(
            "data",
            self,
            vocab_size=(1, INF),
            max_tokens=(1, INF),
            max_source_length=(1, INF),
            max_target_length=(1, INF),
            max_length_ratio=(1, INF),
            valid_bleu_sentences=(0, INF),
        )


@dataclass
class TextDataConfig:
    """The GPT mode's text, tokenizer and windows (``data`` in ``conf/gpt.yaml``)."""

    path: str | None = "data/tinyshakespeare/input.txt"  # plain or .gz UTF-8 text
    hf_dataset: str | None = None  # or a Hub dataset with a text column (online)
    hf_subset: str | None = None
    hf_split: str = "train"
    hf_column: str = "text"
    valid_fraction: float = 0.1  # the last 10% of the text validates
    tokenizer: str = "char"  # char | bpe
    vocab_size: int = 1024  # bpe only
    block_size: int = 64  # tokens per window (the model's context)
    batch_size: int = 12  # windows per batch
    valid_max_tokens: int | None = None  # validate on a prefix; null = all

    def __post_init__(self) -> None:
        check_ranges(
            "data",
            self,
            valid_fraction=(0, 0.999999),
            vocab_size=(1, INF),
            block_size=(1, INF),
            batch_size=(1, INF),
            valid_max_tokens=(1, INF),
        )


@dataclass
class OptimConfig:
    """AdamW and the loss (``conf/optim/*.yaml``)."""

    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.01  # on weight matrices only, not norms, biases, tables
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # gradient norm clipping; 0 disables it

    def __post_init__(self) -> None:
        check_ranges(
            "optim",
            self,
            lr=(1e-12, INF),
            beta1=(0, 0.999999),
            beta2=(0, 0.999999),
            eps=(0, INF),
            weight_decay=(0, INF),
            label_smoothing=(0, 0.999999),
            clip_norm=(0, INF),
        )


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (``conf/schedule/*.yaml``)."""

    kind: str = "inverse_sqrt"  # inverse_sqrt | cosine | constant
    warmup_steps: int = 400
    min_lr_ratio: float = 0.0  # cosine: floor as a fraction of the peak
    # cosine: decays to trainer.max_steps ("steps") or trainer.max_minutes ("minutes")
    horizon: str = "steps"

    def __post_init__(self) -> None:
        check_ranges("schedule", self, warmup_steps=(0, INF), min_lr_ratio=(0, 1))
        if self.horizon not in ("steps", "minutes"):
            raise ValueError(
                f"schedule.horizon={self.horizon!r} is not one of ('steps', 'minutes')"
            )


@dataclass
class TrainerConfig:
    """The loop: length, validation, precision, device (``conf/trainer/*.yaml``)."""

    max_steps: int = 100_000
    max_epochs: int = 1000
    max_minutes: float | None = 28  # stop (and save) after this wall time; None = off
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_every: int = 300  # steps between validations
    log_every: int = 10  # steps between training records in metrics.jsonl
    patience: int = 10  # validations without a better BLEU before stopping; 0 = off
    keep_checkpoints: int = 5  # newest step-NNNNNNN.pt kept (for averaging); 0 = off
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    device: str = "auto"  # auto (cuda → mps → cpu) | cpu | cuda | cuda:1 | mps
    seed: int = 1
    threads: int | None = None  # CPU threads for torch; None = torch's default
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        check_ranges(
            "trainer",
            self,
            max_steps=(1, INF),
            max_epochs=(1, INF),
            max_minutes=(1e-9, INF),
            grad_accum=(1, INF),
            eval_every=(1, INF),
            log_every=(1, INF),
            patience=(0, INF),
            keep_checkpoints=(0, INF),
            threads=(1, INF),
        )


@dataclass
class DecodingConfig:
    """How translations are searched (``conf/decoding/*.yaml``): ``translate``,
    ``evaluate`` and validation during training all read this one section.

    >>> DecodingConfig(beam_size=0)
    Traceback (most recent call last):
    ...
    ValueError: decoding.beam_size=0: must be at least 1
    """

    beam_size: int = 5  # 1 = greedy search
    length_penalty: float = 1.0  # score / ((5 + length) / 6) ** this ranks beams
    max_length_a: float = 1.5  # an output has at most a · source length + b tokens
    max_length_b: int = 10
    batch_size: int = 64  # sentences per batch (beams multiply the work)

    def __post_init__(self) -> None:
        for name in ("beam_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"decoding.{name}={getattr(self, name)}: must be at least 1"
                )
        for name in ("length_penalty", "max_length_a", "max_length_b"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"decoding.{name}={getattr(self, name)}: must not be negative"
                )


@dataclass
class FinetuneConfig:
    """Starting from a trained model instead of from scratch (``finetune.*``)."""

    base: str | None = None  # a translation checkpoint: its weights and tokenizer
    method: str | None = None  # lora (adapters, conf/lora) | full; None = lora


@dataclass
class TrainConfig:
    """The whole run (``conf/train.yaml``); TransformerConfig checks ``model``."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: dict[str, Any] = field(default_factory=dict)  # LoRAConfig checks it
    name: str = "en-fr"  # runs/<name>/<timestamp>/
    runs_dir: str = "runs"
    resume: Any = False  # false | true (the latest run of <name>) | a checkpoint path


@dataclass
class GPTTrainConfig:
    """The GPT mode's run (``conf/gpt.yaml``): the same loop, text instead of pairs."""

    model: dict[str, Any] = field(default_factory=dict)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    name: str = "gpt"
    runs_dir: str = "runs"
    resume: Any = False
