"""The training-state helper (:mod:`geo4d_policy.train.state`) shared by the three trainers.

The trainers' own tests check that a resumed run reproduces an uninterrupted one; these check
the helper's contract on a tiny module: what a step directory holds, ``last`` and pruning, the
restore of every piece of state, and the refusals.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from geo4d_policy.models.checkpoint import CheckpointError, write_checkpoint_dir
from geo4d_policy.train.ema import EMA
from geo4d_policy.train.state import STATE_DIR, Counters, TrainingState, check_run_dir, last_checkpoint


@dataclasses.dataclass
class _Cfg:
    width: int = 3
    depth: int = 1


def _state(seed: int = 0, *, kind: str = "toy", cfg: _Cfg | None = None, **identity) -> TrainingState:
    torch.manual_seed(seed)
    net = nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return TrainingState(kind=kind, trainable=net, ema=EMA(net, decay=0.5), optimizer=opt, scheduler=sched,
                         generator=torch.Generator().manual_seed(seed),
                         identity={"model": cfg or _Cfg(), **identity}, labels={"model": "with another model"})


def _step(state: TrainingState) -> None:
    loss = state.trainable(torch.randn(4, 3, generator=state.generator)).square().mean()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad()
    state.ema.update(0)


def _save(state: TrainingState, out, step: int, **kw):
    path = out / f"step_{step}"

    def write(state_writer):
        write_checkpoint_dir(path, {"format": "toy"}, {"w": torch.zeros(1)}, extra_writer=state_writer)

    return state.save(path, Counters(step, 1, step + 2), write_checkpoint=write, keep_last=2, **kw)


def test_save_writes_every_piece_then_last_and_prunes(tmp_path):
    s = _state()
    assert not check_run_dir(tmp_path, resume=True) and last_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        _step(s)
        _save(s, tmp_path, step, extra={"class_weights": [1.0, 2.0]})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_2", "step_3"]
    assert last_checkpoint(tmp_path) == tmp_path / "step_3"
    d = tmp_path / "step_3" / STATE_DIR
    assert {p.name for p in d.iterdir()} == {"raw.safetensors", "ema.safetensors", "optimizer.pt",
                                             "scheduler.pt", "rng_0.pt", "state.json"}
    meta = json.loads((d / "state.json").read_text())
    assert meta == {"kind": "toy", "step": 3, "epoch": 1, "next_batch_in_epoch": 5,
                    "model": {"width": 3, "depth": 1}, "class_weights": [1.0, 2.0]}
    raw = load_file(str(d / "raw.safetensors"))
    assert torch.equal(raw["weight"], s.trainable.weight.detach())
    with pytest.raises(FileExistsError, match="already holds a training run"):
        check_run_dir(tmp_path, resume=False)
    assert check_run_dir(tmp_path, resume=True)


def test_restore_continues_exactly(tmp_path):
    a = _state(seed=0)
    _step(a)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    np.random.seed(7)
    _save(a, tmp_path, 1)
    after_save = (np.random.rand(), torch.rand(()).item())
    _step(a)
    b = _state(seed=5)  # other weights, RNGs, optimizer state: all replaced
    counters, meta = b.restore(tmp_path)
    assert counters == Counters(1, 1, 3) and meta["kind"] == "toy"
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (np.random.rand(), torch.rand(()).item()) == after_save
    _step(b)
    assert torch.equal(a.trainable.weight, b.trainable.weight)
    assert all(torch.equal(a.ema.shadow[k], b.ema.shadow[k]) for k in a.ema.shadow)
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()


def test_refusals_name_what_differs(tmp_path):
    _save(_state(tasks=["A"]), tmp_path, 1)
    with pytest.raises(CheckpointError, match="is a toy run, not a segmenter run"):
        _state(kind="segmenter", tasks=["A"]).restore(tmp_path)
    with pytest.raises(CheckpointError, match=r"trained with another model:\n  model.width: expected 4, "
                                              r"checkpoint has 3"):
        _state(cfg=_Cfg(width=4), tasks=["A"]).restore(tmp_path)
    with pytest.raises(CheckpointError, match=r"trained with another tasks:\n  tasks: expected \['B'\]"):
        _state(tasks=["B"]).restore(tmp_path)
    ignoring = _state(cfg=_Cfg(width=4), tasks=["A"])
    ignoring.ignore = frozenset({"model.width"})
    with pytest.raises(RuntimeError):  # the comparison passes; the weights then do not fit
        ignoring.trainable = nn.Linear(4, 2)
        ignoring.restore(tmp_path)
    with pytest.raises(CheckpointError, match="no training run to resume"):
        _state().restore(tmp_path / "empty")


def test_an_interrupted_save_never_becomes_the_resume_point(tmp_path):
    s = _state()
    _save(s, tmp_path, 1)

    def crash(state_writer):
        def writer(d):
            state_writer(d)
            raise OSError("disk full")
        write_checkpoint_dir(tmp_path / "step_2", {"format": "toy"}, {"w": torch.zeros(1)}, extra_writer=writer)

    with pytest.raises(OSError, match="disk full"):
        s.save(tmp_path / "step_2", Counters(2, 0, 0), write_checkpoint=crash, keep_last=2)
    assert last_checkpoint(tmp_path) == tmp_path / "step_1" and not (tmp_path / "step_2").exists()
