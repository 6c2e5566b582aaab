"""LoRA fine-tuning from the command line's code path: adapter checkpoints, reloading
onto their base (and refusing another), inference through translate/evaluate/merge,
resume, and a better target-domain BLEU after a small run."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import PROJECT_ROOT, compose_config

from encoder_transformer.lora import (
    LoRAConfig,
    add_lora,
    load_lora_state_dict,
    lora_parameters,
)
from machine_translation import evaluate as evaluate_command
from machine_translation import merge_adapter, translate
from machine_translation.checkpoints.adapters import (
    load_adapted_model,
    weights_fingerprint,
)
from machine_translation.checkpoints.files import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.config.schema import DecodingConfig
from machine_translation.data.corpus import CorpusSpec
from machine_translation.data.readers import load_corpus
from machine_translation.evaluation.scoring import evaluate
from machine_translation.evaluation.test_sets import TestSet
from machine_translation.training.finetune import FineTuning
from machine_translation.training.recipes import train

# The target domain: a few Tatoeba sentences, far from the smoke model's captions.
TATOEBA = {"kind": "tsv", "path": "data/tatoeba/eng-fra.tsv.gz", "split": "train"}
SENTENCES = 16
TARGET = f"[{{kind: tsv, path: {TATOEBA['path']}, split: train, limit: {SENTENCES}}}]"
LORA_RUN = [
    "name=lora",
    f"data.train={TARGET}",
    f"data.valid={TARGET}",
    f"data.valid_bleu_sentences={SENTENCES}",
    "lora.rank=16",
    "lora.targets=[q,k,v,o,up,down]",
    "lora.dropout=0",
    "optim.lr=1e-2",
    "schedule.kind=constant",
    "schedule.warmup_steps=5",
    "trainer.max_steps=200",
    "trainer.eval_every=100",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_lora(runs: Path, base: Path, *overrides: str) -> Path:
    return train(compose_config(runs, f"finetune.base={base}", *LORA_RUN, *overrides))


@pytest.fixture(scope="module")
def base(smoke_run) -> Path:
    """The smoke model (Multi30K captions), the base to adapt."""
    return smoke_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory) -> Path:
    """LoRA fine-tuning of the base on the target sentences: 200 steps, ~20 s."""
    return train_lora(tmp_path_factory.mktemp("runs"), base)


@pytest.fixture(scope="module")
def adapter(lora_run) -> Path:
    return lora_run / "checkpoints" / "best.pt"


@functools.cache
def target_domain() -> TestSet:
    corpus = load_corpus(CorpusSpec(**TATOEBA, limit=SENTENCES), root=PROJECT_ROOT)
    return TestSet("target", corpus.sources, [[t] for t in corpus.targets])


def greedy_chrf(checkpoint: Path, adapter: Path | None = None) -> float:
    cpu = torch.device("cpu")
    test_set = target_domain()
    decoding = DecodingConfig()
    scores = evaluate(checkpoint, [test_set], cpu, "fp32", decoding, [1], None, adapter)
    # chrF: BLEU is 0 for sentences of one to three words (no 4-gram to match).
    return scores["target", 1].chrf


def test_lora_finetuning_raises_the_target_domain_chrf(base, lora_run, adapter):
    before = greedy_chrf(base)
    after = greedy_chrf(adapter)  # the adapters, merged into their recorded base
    assert after > before + 10, (before, after)
    with open(lora_run / "metrics.jsonl") as file:
        valid = [row for row in map(json.loads, file) if row["kind"] == "valid"]
    assert [row["step"] for row in valid] == [100, 200]
    assert valid[1]["loss"] < valid[0]["loss"]


def test_adapter_checkpoints_hold_only_the_adapters_and_their_base(
    base, lora_run, adapter
):
    best = load_checkpoint(adapter)
    base_payload = load_checkpoint(base)
    assert best["adapter"]["base"] == {
        "path": str(base.resolve()),
        "fingerprint": weights_fingerprint(base_payload["model"]),
    }
    assert best["adapter"]["lora"]["targets"] == ["q", "k", "v", "o", "up", "down"]
    assert "tokenizer" not in best and "training" not in best
    assert all(name.endswith((".lora_A", ".lora_B")) for name in best["model"])
    adapter_values = sum(tensor.numel() for tensor in best["model"].values())
    assert adapter.stat().st_size < 4 * adapter_values + 64_000  # fp32 + metadata
    # last.pt resumes, with Adam's two moments for the adapters and nothing else.
    last = load_checkpoint(lora_run / "checkpoints" / "last.pt")
    moments = [
        tensor.numel()
        for state in last["training"]["optimizer"]["state"].values()
        for name, tensor in state.items()
        if name != "step"
    ]
    assert sum(moments) == 2 * adapter_values


def test_an_adapter_checkpoint_reloads_onto_its_base(base, adapter):
    merged, _, _ = load_adapted_model(adapter)  # the base recorded in the adapters
    explicit, _, _ = load_translation_model(base, adapter=adapter)
    unmerged, _, _ = load_translation_model(base)
    plain = list(unmerged.modules())
    payload = load_checkpoint(adapter)
    add_lora(unmerged, LoRAConfig.from_dict(payload["adapter"]["lora"]))
    load_lora_state_dict(unmerged, payload["model"])
    assert all(p.abs().sum() > 0 for p in lora_parameters(unmerged))
    source = torch.tensor([[5, 17, 42, 9, 2]])
    target = torch.tensor([[1, 33, 8, 12]])
    with torch.no_grad():
        expected = unmerged.eval()(source, None, target)
        torch.testing.assert_close(merged(source, None, target), expected)
        torch.testing.assert_close(explicit(source, None, target), expected)
    assert len(list(merged.modules())) == len(plain)  # merged: no adapter modules


def test_adapters_on_another_base_fail_clearly(base, adapter, tmp_path, capsys):
    payload = load_checkpoint(base)
    payload["model"]["decoder.final_norm.weight"] += 0.01  # another model
    other = save_checkpoint(payload, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="trained on another base model"):
        load_adapted_model(adapter, other)
    code = translate.main(["--checkpoint", str(other), "--adapter", str(adapter), "A"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: these LoRA adapters were trained on another")
    assert error.count("\n") == 1
    with pytest.raises(CheckpointError, match="is not a LoRA adapter checkpoint"):
        load_adapted_model(base)


def test_translate_evaluate_and_merge_accept_adapters(base, adapter, tmp_path, capsys):
    sentences = target_domain().sources[:3]
    outputs = []
    for arguments in (
        ["--adapter", str(adapter)],
        ["--checkpoint", str(adapter)],
        ["--checkpoint", str(base), "--adapter", str(adapter)],
    ):
        assert translate.main([*arguments, "--beam", "1", *sentences]) == 0
        outputs.append(capsys.readouterr().out)
    merged = tmp_path / "merged.pt"
    assert merge_adapter.main([str(adapter), "--output", str(merged)]) == 0
    assert "adapter" not in load_checkpoint(merged)  # an ordinary checkpoint
    capsys.readouterr()
    assert translate.main(["--checkpoint", str(merged), "--beam", "1", *sentences]) == 0
    outputs.append(capsys.readouterr().out)
    assert len(set(outputs)) == 1 and len(outputs[0].splitlines()) == 3
    (tmp_path / "in.en").write_text("\n".join(sentences) + "\n")
    source = str(tmp_path / "in.en")  # its own reference: only the run is checked
    options = ["--source", source, "--references", source, "--beam", "1"]
    output = ["--output-dir", str(tmp_path / "eval")]
    assert evaluate_command.main(["--adapter", str(adapter), *options, *output]) == 0
    assert "BLEU" in capsys.readouterr().out


def test_a_lora_run_resumes_from_its_adapter_checkpoint(base, lora_run, tmp_path):
    copy = tmp_path / "lora" / lora_run.name
    shutil.copytree(lora_run, copy)
    resumed = train_lora(tmp_path, base, "trainer.max_steps=202", "resume=true")
    assert resumed == copy
    last = load_checkpoint(copy / "checkpoints" / "last.pt")
    assert last["training"]["state"]["step"] == 202
    assert "adapter" in last
    with pytest.raises(CheckpointError, match="same lora settings"):
        train_lora(tmp_path, base, "lora.rank=8", "resume=true")


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["finetune.method=lora"], ValueError, "needs finetune.base=PATH"),
        (["finetune.base={base}", "finetune.method=half"], ValueError, "not one of"),
        (["finetune.base={base}", "+lora.rnak=4"], ValueError, "did you mean 'rank'"),
        (["finetune.base={adapter}"], CheckpointError, "merge it first"),
    ],
)
def test_fine_tuning_mistakes_are_named(
    base, adapter, tmp_path, overrides, error, message
):
    overrides = [o.format(base=base, adapter=adapter) for o in overrides]
    with pytest.raises(error, match=message):
        FineTuning.from_config(compose_config(tmp_path, *overrides))
