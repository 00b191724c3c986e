import numpy as np
import pytest

from geo4d_policy.interface import (
    EVAL_SEED_OFFSET,
    ActionChunk,
    UnknownNameError,
    canonical_task_name,
    SEED_STREAMS,
    data_seed,
    dev_seed,
    eval_seed,
    seed_stream_of,
    stream_seed,
)


def test_task_names_camel_and_snake():
    assert canonical_task_name("PutSpatulaOnTable") == "PutSpatulaOnTable"
    assert canonical_task_name("place_apple_from_bowl_into_bin") == "PlaceAppleFromBowlIntoBin"
    with pytest.raises(UnknownNameError, match="StoreCerealBoxUnderShelf"):
        canonical_task_name("StackBlocks")


def test_seed_streams_disjoint():
    assert data_seed(0, 0) == 0 and eval_seed(0, 0) == EVAL_SEED_OFFSET
    assert max(data_seed(9, 99_999), data_seed(0, 5)) < EVAL_SEED_OFFSET <= eval_seed(0, 0)
    with pytest.raises(ValueError):
        eval_seed(-1, 0)


def test_three_seed_streams_pairwise_disjoint_over_a_large_range():
    bases, indices = np.arange(0, 10_000, 37), np.arange(0, 100_000, 997)
    seeds = {name: {fn(int(b), int(i)) for b in bases for i in indices}
             for name, fn in (("data", data_seed), ("dev", dev_seed), ("eval", eval_seed))}
    for a in seeds:
        for b in seeds:
            if a < b:
                assert not seeds[a] & seeds[b], (a, b)
    # The extremes of every stream stay inside its own block, which the streams do not share.
    for stream in SEED_STREAMS:
        for base, index in ((0, 0), (9_999, 99_999), (0, 999_999_999)):
            assert seed_stream_of(stream_seed(stream, base, index)) == stream
        with pytest.raises(ValueError, match="out of range"):
            stream_seed(stream, 10_000, 0)  # would leave the block
    assert dev_seed(0, 0) != eval_seed(0, 0) != data_seed(0, 0)
    with pytest.raises(UnknownNameError, match="valid seed streams: data, dev, eval"):
        stream_seed("test", 0, 0)


def test_action_chunk_validation():
    X = np.tile(np.eye(4), (3, 1, 1))
    chunk = ActionChunk({"left": X}, {"left": np.full(3, 0.08)})
    assert len(chunk) == 3 and chunk[1].arms["left"].width == 0.08
    with pytest.raises(ValueError, match="non-finite"):
        ActionChunk({"left": X * np.nan}, {"left": np.zeros(3)})
    with pytest.raises(ValueError, match="different lengths"):
        ActionChunk({"left": X, "right": X[:2]}, {"left": np.zeros(3), "right": np.zeros(2)})
