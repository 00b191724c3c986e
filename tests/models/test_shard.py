"""geo4d_policy.models.shard: a process's rows of a global batch's draws (the multi-process
equivalence itself is tested end to end in tests/train/test_multiprocess.py)."""

from __future__ import annotations

import functools

import pytest
import torch

from geo4d_policy.models.shard import BatchShard, base_generator, draw, global_ratio


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


def test_each_process_draws_its_rows_of_the_global_batch():
    for fn in (torch.randn, functools.partial(torch.randint, 0, 7)):
        full = fn((6, 2), generator=_gen())
        rows = [draw(fn, (2, 2), BatchShard(_gen(), r, 3), device="cpu") for r in range(3)]
        assert torch.equal(torch.cat(rows), full)
        assert torch.equal(draw(fn, (6, 2), _gen(), device="cpu"), full)  # one process: the plain draw
    assert draw(torch.rand, (4,), None, device="cpu").shape == (4,)
    shard = BatchShard(_gen(), 1, 2)
    assert base_generator(shard) is shard.generator and torch.equal(shard.take(torch.arange(6)), torch.arange(3, 6))
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        BatchShard(_gen(), 2, 2)
    with pytest.raises(ValueError, match="5 rows does not split over 2"):
        shard.take(torch.arange(5))


def test_one_process_ratio_is_the_plain_ratio():
    num, den = torch.tensor(3.0), torch.tensor(4.0)
    assert global_ratio(num, den, BatchShard(_gen())) == global_ratio(num, den, _gen()) == 0.75
    assert global_ratio(num, torch.tensor(0.0), None) == 3.0  # floored denominator
