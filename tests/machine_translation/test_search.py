import pytest
import torch

from machine_translation.inference.beam_choice import choose_beams, special_tokens
from machine_translation.inference.beam_search import beam_search
from machine_translation.inference.greedy_choice import greedy_tokens
from machine_translation.inference.greedy_search import greedy_search
from machine_translation.model import Seq2SeqTransformer

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
    # Limits 3+2 and 4+2 count the EOS that ends each output.
    assert [len(output) for output in outputs] == [3 + 2 - 1, 4 + 2 - 1]
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
            logits[[PAD, BOS]] = float("-inf")
            prefix.append(int(logits.argmax()))
    assert prefix[1:] == output


# --- beam search -----------------------------------------------------------------


class TokenHistory:
    """A 'cache' that only remembers the tokens, reordered like the real one."""

    tokens = None

    def reorder_self_attention(self, indices):
        self.tokens = self.tokens.index_select(0, indices)

    def reorder_cross_attention(self, indices):
        pass  # the source rows are passed at every step

    def compact_cross_attention(self, compaction):
        pass  # likewise


class FullRecompute:
    """The model without a KV cache: each step reruns the decoder on all tokens."""

    def __init__(self, model):
        self.model = model

    def encode(self, source_ids, source_mask):
        return self.model.encode(source_ids, source_mask)

    def new_cache(self, capacity=None):
        return TokenHistory()

    def decode_step(self, tokens, encoder_hidden_states, source_mask, cache):
        if cache.tokens is None:
            cache.tokens = tokens
        else:
            cache.tokens = torch.cat([cache.tokens, tokens], dim=1)
        # Beam search passes one source row per sentence for its beams' rows.
        beams = cache.tokens.size(0) // encoder_hidden_states.size(0)
        if source_mask is not None:
            source_mask = source_mask.repeat_interleave(beams, dim=0)
        logits = self.model.decoder(
            cache.tokens,
            None,
            encoder_hidden_states.repeat_interleave(beams, dim=0),
            source_mask,
        )
        return logits[:, -tokens.size(1) :]


def search_kwargs(**overrides):
    return {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, **overrides}


def random_batch(lengths, vocabulary=37):
    sources = [torch.randint(3, vocabulary, (n,)) for n in lengths]
    batch = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True)
    return sources, batch, batch != PAD


@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
def test_beam_size_one_equals_greedy(tiny_config, positions):
    model = Seq2SeqTransformer(tiny_config(positions=positions, n_kv_heads=2)).eval()
    _, batch, mask = random_batch([4, 9, 6, 2, 7])
    prefixes = [[], [5, 6], [7], [], [8, 9, 10, 11, 12, 13]]
    for kwargs in ({}, {"prefixes": prefixes}):
        greedy = greedy_search(model, batch, mask, **search_kwargs(**kwargs))
        beam = beam_search(model, batch, mask, **search_kwargs(beam_size=1, **kwargs))
        assert [hypotheses[0].tokens for hypotheses in beam] == greedy


@pytest.mark.parametrize(
    "attention",
    [{"n_kv_heads": 1}, {"attention": "latent", "kv_latent_dim": 16}],
    ids=["mqa", "mla"],
)
def test_cached_beam_search_equals_full_recomputation(tiny_config, attention):
    model = Seq2SeqTransformer(tiny_config(positions="rope", **attention)).eval()
    _, batch, mask = random_batch([5, 8, 3])
    kwargs = search_kwargs(beam_size=4, nbest=4, alpha=0.6)
    cached = beam_search(model, batch, mask, **kwargs)
    uncached = beam_search(FullRecompute(model), batch, mask, **kwargs)
    for ours, reference in zip(cached, uncached, strict=True):
        assert [h.tokens for h in ours] == [h.tokens for h in reference]
        for a, b in zip(ours, reference, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)


def test_nbest_lists_are_sorted_and_sized(tiny_config):
    model = Seq2SeqTransformer(tiny_config()).eval()
    _, batch, mask = random_batch([6, 4])
    results = beam_search(model, batch, mask, **search_kwargs(beam_size=5, nbest=3))
    for hypotheses in results:
        assert len(hypotheses) == 3
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == 3


def test_beam_sentence_in_a_padded_batch_decodes_as_alone(tiny_config):
    model = Seq2SeqTransformer(tiny_config(n_kv_heads=2)).eval()
    sources, batch, mask = random_batch([4, 9, 6])
    kwargs = search_kwargs(beam_size=3, nbest=3)
    in_batch = beam_search(model, batch, mask, **kwargs)
    for source, hypotheses in zip(sources, in_batch, strict=True):
        alone = beam_search(
            model, source[None], torch.ones(1, len(source), dtype=torch.bool), **kwargs
        )[0]
        assert [h.tokens for h in hypotheses] == [h.tokens for h in alone]
        for a, b in zip(hypotheses, alone, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)


def test_beam_stops_at_the_length_limit(tiny_config):
    model = Seq2SeqTransformer(tiny_config()).eval()
    with torch.no_grad():
        model.decoder.embedding.tokens.weight[EOS] = -100.0
    source = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    results = beam_search(
        model,
        source,
        source != PAD,
        **search_kwargs(beam_size=3, max_length_a=1.0, max_length_b=2),
    )
    assert [len(h[0].tokens) for h in results] == [3 + 2 - 1, 4 + 2 - 1]


def test_forced_prefix_starts_every_output(tiny_config):
    model = Seq2SeqTransformer(tiny_config()).eval()
    _, batch, mask = random_batch([5, 5])
    prefixes = [[11, 12, 13], []]
    greedy = greedy_search(model, batch, mask, **search_kwargs(prefixes=prefixes))
    beam = beam_search(
        model, batch, mask, **search_kwargs(beam_size=4, nbest=4, prefixes=prefixes)
    )
    assert greedy[0][:3] == [11, 12, 13]
    assert all(h.tokens[:3] == [11, 12, 13] for h in beam[0])


def chosen_one_by_one(log_probs, scores, k, never):
    """The reference for choose_beams, in plain Python for one group: every
    (beam, token) candidate ranked by score, taken best first until k continue."""
    candidates = sorted(
        (
            (score + log_probs[beam][token], beam, token)
            for beam, score in enumerate(scores)
            for token in range(len(log_probs[beam]))
            if token not in never and score + log_probs[beam][token] > float("-inf")
        ),
        key=lambda candidate: -candidate[0],
    )
    ending, continuing = [], []
    for _score, beam, token in candidates:
        if len(continuing) == k:
            break
        (ending if token == EOS else continuing).append((beam, token))
    return ending, continuing


@pytest.mark.parametrize("beams_now", [1, 3])
def test_choose_beams_takes_the_best_until_k_continue(beams_now):
    """Against a one-by-one reference: which candidates end, which continue (in
    order), their parents, tokens and scores; groups whose beams are dead keep
    none; a required token is the only one a group may choose."""
    torch.manual_seed(3)
    groups, k, vocabulary = 6, 3, 9
    logits = torch.randn(groups * beams_now, vocabulary)
    logits[:, EOS] += 1.0  # EOS often among the best: hypotheses end on the way
    scores = -torch.rand(groups, beams_now) * 2
    if beams_now > 1:
        scores[1, 1:] = float("-inf")  # a group with one live beam
    required = torch.tensor([-1, -1, -1, -1, EOS, 7])
    choice = choose_beams(logits, scores, required, special_tokens(EOS, PAD, BOS), k)
    log_probs = torch.log_softmax(logits.double(), dim=-1).view(groups, beams_now, -1)
    for group in range(groups):
        rows = log_probs[group].clone()
        if required[group] >= 0:
            allowed = rows[:, required[group]].clone()
            rows[:] = float("-inf")
            rows[:, required[group]] = allowed
        ending, continuing = chosen_one_by_one(
            rows.tolist(), scores[group].double().tolist(), k, (PAD, BOS)
        )
        taken = choice.ending[group].nonzero().squeeze(1).tolist()
        pairs = choice.beams[group].tolist(), choice.tokens[group].tolist()
        assert [(pairs[0][i], pairs[1][i]) for i in taken] == ending
        alive = len(continuing)
        assert choice.continuing[group] == (alive > 0)
        parents = choice.parents[group, :alive] - group * beams_now
        assert (
            list(
                zip(
                    parents.tolist(),
                    choice.next_tokens[group, :alive].tolist(),
                    strict=True,
                )
            )
            == continuing
        )
        expected = [float(scores[group, b]) + rows[b, t].item() for b, t in continuing]
        torch.testing.assert_close(
            choice.scores[group, :alive], torch.tensor(expected, dtype=torch.float32)
        )
        assert (choice.scores[group, alive:] == float("-inf")).all()
        assert (choice.next_tokens[group, alive:] == PAD).all()
    assert choice.tokens[5][choice.top_scores[5] > float("-inf")].eq(7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_take_the_first_best_allowed_token(dtype):
    """Against a one-by-one reference, on logits that tie often (as bf16's do):
    the first of a row's best tokens, never a forbidden one."""
    torch.manual_seed(4)
    logits = (torch.randn(64, 300) * 3).round().to(dtype)
    logits[:5, 0] = 100.0  # the best token forbidden
    forbidden = torch.tensor([PAD, BOS])
    chosen = greedy_tokens(logits, forbidden)
    for row, token in zip(logits.tolist(), chosen.tolist(), strict=True):
        allowed = [column for column in range(300) if column not in (PAD, BOS)]
        best = max(row[column] for column in allowed)
        assert token == next(c for c in allowed if row[c] == best)
