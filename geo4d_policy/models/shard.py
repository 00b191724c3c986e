"""Training randomness and loss normalisers of a global batch split over processes.

A multi-process (DDP) run trains every step on one *global* batch of ``world x b`` samples:
process ``rank`` holds rows ``[rank * b, (rank + 1) * b)`` (:meth:`BatchShard.take`). Its
training noise comes from a generator seeded identically on every process, which draws the
noise of the whole global batch and keeps the process's rows (:meth:`BatchShard.draw`), so a
sample gets the same noise whatever the number of processes. DDP averages the processes'
gradients, which equals the gradient of the global batch's loss when every loss term is a mean
over equally many rows of each process; a loss normalised by a data-dependent count (a weighted
mean over valid pixels) normalises by the count over all processes instead
(:func:`global_ratio`). Together, N processes of batch ``b`` reproduce one process of batch
``N b`` up to floating-point reassociation.

Model code draws through :func:`draw`, which takes a plain ``torch.Generator`` (one process;
what sampling and tests pass), a :class:`BatchShard`, or None (fresh randomness).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class BatchShard:
    """This process's rows of the global batch, and the training generator every process shares.

    Attributes:
        generator: seeded the same on every process (its draws are the same everywhere).
        rank: this process's index.
        world: the number of processes.
    """

    generator: torch.Generator
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"BatchShard: rank {self.rank} outside 0..{self.world - 1}")

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def take(self, x: Any) -> Any:
        """This process's rows of ``x`` (global rows first; their number a multiple of ``world``)."""
        n = x.shape[0]
        if n % self.world:
            raise ValueError(f"a global batch of {n} rows does not split over {self.world} processes")
        b = n // self.world
        return x[self.rank * b:(self.rank + 1) * b]

    def draw(self, fn: Callable[..., torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """``fn(shape)`` for this process's ``shape[0]`` rows: the global batch's draw, sliced.

        ``fn`` is a sampler called as ``fn(shape, generator=, device=)`` (``torch.randn``,
        ``functools.partial(torch.randint, 0, high)``...). The result lives on the generator's device.
        """
        shape = tuple(shape)
        full = fn((shape[0] * self.world, *shape[1:]), generator=self.generator, device=self.generator.device)
        return self.take(full)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes (``t`` itself in one process); no gradient."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        s = t.detach().clone()
        dist.all_reduce(s)
        return s


Randomness = torch.Generator | BatchShard | None
"""What a model's training loss draws from (see the module docstring)."""


def draw(fn: Callable[..., torch.Tensor], shape: Sequence[int], generator: Randomness, *,
         device: torch.device | str) -> torch.Tensor:
    """``fn(shape)`` drawn from ``generator`` on its device (on ``device`` without a generator).

    With a :class:`BatchShard` the rows are this process's rows of the global batch's draw, so
    row ``i`` of the global batch gets the same numbers however many processes share it.
    """
    if isinstance(generator, BatchShard):
        return generator.draw(fn, shape)
    if generator is None:
        return fn(tuple(shape), device=device)
    return fn(tuple(shape), generator=generator, device=generator.device)


def base_generator(generator: Randomness) -> torch.Generator | None:
    """The ``torch.Generator`` behind ``generator`` (for draws that are not per row)."""
    return generator.generator if isinstance(generator, BatchShard) else generator


def global_ratio(num: torch.Tensor, den: torch.Tensor, generator: Randomness, *, min_den: float = 1.0
                 ) -> torch.Tensor:
    """``sum(num) / sum(den)`` over the global batch, as this process's share of a DDP-averaged loss.

    ``num`` is this process's sum (with gradient), ``den`` its normaliser (no gradient). Each of
    ``W`` processes returns ``W num / sum_processes(den)``: their mean (what DDP's gradient
    average and the logged metrics take) is the global ratio. ``den`` is floored at ``min_den``.
    """
    if not isinstance(generator, BatchShard) or generator.world == 1:
        return num / den.clamp_min(min_den)
    return num * generator.world / generator.total(den).clamp_min(min_den)
