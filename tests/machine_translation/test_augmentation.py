"""Robustness augmentation in the training stream: reproducible, and what it teaches
(a sentence typed without its final stop still translates, and ends)."""

import torch

from machine_translation.config.schema import AugmentConfig, DecodingConfig
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.corpus import ParallelCorpus
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoders import InProcess
from machine_translation.model import Seq2SeqTransformer
from machine_translation.training.translation_task import TranslationTask, encode_corpus

PAIRS = [
    ("The cat sleeps.", "Le chat dort."),
    ("A dog runs.", "Un chien court."),
    ("The bird sings.", "L'oiseau chante."),
    ("A man eats.", "Un homme mange."),
    ("The girl reads.", "La fille lit."),
    ("A boy swims.", "Un garçon nage."),
    ("Thank you!", "Merci !"),
    ("Where is the station?", "Où est la gare ?"),
]
ONLY_DROP = AugmentConfig(
    fraction=0.5,
    drop_final_punctuation=1.0,
    lowercase_source=0.0,
    uppercase=0.0,
    titlecase_source=0.0,
)


def toy_task(tiny_config, augment: AugmentConfig | None, seed: int = 0):
    corpus = ParallelCorpus(
        [s for s, _ in PAIRS] * 8, [t for _, t in PAIRS] * 8, name="toy"
    )
    texts = [s for s, _ in PAIRS] + [t for _, t in PAIRS]
    tokenizer = BPETokenizer.train(texts * 4, vocab_size=300)
    encoded, _ = encode_corpus(corpus, tokenizer)
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=tokenizer.vocab_size, d_model=64, d_ff=128)
    model = Seq2SeqTransformer(config)
    task = TranslationTask(
        model, tokenizer, encoded, encoded, max_tokens=256, seed=seed, augment=augment
    )
    return task


def epoch_batches(task: TranslationTask) -> list[list[list[int]]]:
    return [batch.source_ids.tolist() for batch in task.batches()]


def test_the_casual_stream_is_reproducible_and_changes_each_epoch(tiny_config):
    one, two = (toy_task(tiny_config, ONLY_DROP) for _ in range(2))
    first = epoch_batches(one)
    assert first == epoch_batches(two)  # the same seed, the same stream
    plain = epoch_batches(toy_task(tiny_config, None))
    assert first != plain  # some pairs came without their final stop
    one.next_epoch()
    assert epoch_batches(one) != first  # another share, another order
    other = toy_task(tiny_config, ONLY_DROP, seed=1)
    assert epoch_batches(other) != first


def test_a_tiny_model_trained_with_it_translates_with_and_without_the_stop(
    tiny_config,
):
    task = toy_task(tiny_config, ONLY_DROP)
    model, tokenizer = task.model, task.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):  # epochs of 64 pairs, half of them without a final stop
        for batch in task.batches():
            loss = task.loss(model, batch, label_smoothing=0.0) / batch.target_tokens
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        task.next_epoch()
    model.eval()
    sources = ["The cat sleeps.", "The cat sleeps", "Where is the station"]
    translations = translate_token_ids(
        InProcess(model),
        tokenizer,
        tokenizer.encode_batch(sources),
        torch.device("cpu"),
        "fp32",
        DecodingConfig(beam_size=1),
    )
    assert [t[0].text for t in translations] == [
        "Le chat dort.",
        "Le chat dort",
        "Où est la gare",
    ]
