"""Compaction: moving a few rows gives what gathering the kept rows gives."""

import pytest
import torch

from decoder_transformer.compaction import Compaction
from decoder_transformer.kv_cache import KeyValueCache
from decoder_transformer.latent_cache import LatentCache


@pytest.mark.parametrize(
    "keep",
    [
        [True, False, True, True, False, True, False],  # some leave, some move
        [False, False, True, True, True, True, True],  # the first ones leave
        [True, True, True, True, True, False, False],  # the last ones: nothing moves
        [True, True, True, True, True, True, True],
        [False, False, False, False, False, False, True],
    ],
)
def test_compacting_equals_gathering_the_kept_rows_in_its_order(keep):
    keep = torch.tensor(keep)
    compaction = Compaction.keeping(keep)
    assert sorted(compaction.order.tolist()) == keep.nonzero().squeeze(1).tolist()
    assert compaction.sources.numel() <= int((~keep).sum())
    steps = [torch.randn(7, 2, 3, 4) for _ in range(2)]
    gathered, compacted = KeyValueCache(), KeyValueCache(capacity=8)
    latent_gathered, latent_compacted = LatentCache(), LatentCache()
    for step in steps:
        gathered.update(step, step + 1)
        compacted.update(step, step + 1)
        latent_gathered.update(step.flatten(2))
        latent_compacted.update(step.flatten(2))
    gathered.reorder(compaction.order)
    compacted.compact(compaction)
    latent_gathered.reorder(compaction.order)
    latent_compacted.compact(compaction)
    for expected, actual in zip(gathered.read(), compacted.read(), strict=True):
        assert torch.equal(actual, expected)
    assert torch.equal(latent_compacted.read(), latent_gathered.read())
    # Both go on decoding alike.
    step = torch.randn(compaction.rows, 2, 1, 4)
    for expected, actual in zip(
        gathered.update(step, step), compacted.update(step, step), strict=True
    ):
        assert torch.equal(actual, expected)


def test_compacting_moves_only_as_many_rows_as_leave():
    keep = torch.ones(64, dtype=torch.bool)
    keep[[3, 40]] = False
    compaction = Compaction.keeping(keep)
    assert compaction.sources.tolist() == [62, 63]
    assert compaction.destinations.tolist() == [3, 40]
    assert compaction.rows == 62
