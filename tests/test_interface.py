import numpy as np
import pytest

from geo4d_policy.interface import (
    EVAL_SEED_OFFSET,
    ActionChunk,
    UnknownNameError,
    canonical_task_name,
    data_seed,
    eval_seed,
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


def test_action_chunk_validation():
    X = np.tile(np.eye(4), (3, 1, 1))
    chunk = ActionChunk({"left": X}, {"left": np.full(3, 0.08)})
    assert len(chunk) == 3 and chunk[1].arms["left"].width == 0.08
    with pytest.raises(ValueError, match="non-finite"):
        ActionChunk({"left": X * np.nan}, {"left": np.zeros(3)})
    with pytest.raises(ValueError, match="different lengths"):
        ActionChunk({"left": X, "right": X[:2]}, {"left": np.zeros(3), "right": np.zeros(2)})
