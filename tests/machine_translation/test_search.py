import torch

from machine_translation.model import Seq2SeqTransformer
from machine_translation.search import greedy_search

PAD, BOS, EOS = 0, 1, 2


def test_greedy_stops_at_the_length_limit(tiny_config):
    model = Seq2SeqTransformer(tiny_config()).eval()
    with torch.no_grad():  # EOS never wins: every sentence runs to its limit
        model.decoder.embedding.tokens.weight[EOS] = -100.0
    source = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    outputs = greedy_search(
        model,
        source,
        source != PAD,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
        max_length_a=1.0,
        max_length_b=2,
    )
    assert [len(output) for output in outputs] == [3 + 2, 4 + 2]
    assert all(PAD not in output for output in outputs)


def test_sentence_in_a_padded_batch_decodes_as_alone(tiny_config):
    model = Seq2SeqTransformer(tiny_config(n_kv_heads=2)).eval()
    sources = [torch.randint(3, 37, (n,)) for n in (4, 9, 6, 2)]
    batch = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    in_batch = greedy_search(
        model, batch, batch != PAD, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )
    for source, output in zip(sources, in_batch, strict=True):
        alone = greedy_search(
            model,
            source[None],
            torch.ones(1, len(source), dtype=torch.bool),
            bos_id=BOS,
            eos_id=EOS,
            pad_id=PAD,
        )
        assert output == alone[0]


def test_greedy_equals_argmax_of_full_recomputation(tiny_config):
    """The cached search picks, at each step, the argmax of an uncached forward pass."""
    model = Seq2SeqTransformer(tiny_config(positions="rope")).eval()
    source = torch.randint(3, 37, (1, 5))
    output = greedy_search(
        model, source, source != PAD, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )[0]
    prefix = [BOS]
    with torch.no_grad():
        for _ in range(len(output)):
            logits = model(source, None, torch.tensor([prefix]))[0, -1]
            logits[PAD] = float("-inf")
            prefix.append(int(logits.argmax()))
    assert prefix[1:] == output
