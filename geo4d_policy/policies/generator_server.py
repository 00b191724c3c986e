"""One generator shared by parallel rollout workers: a small local prediction server and its client.

``geo4d-rollout --policy geo4d --workers 8 --device cuda`` runs eight episode processes; loading
eight copies of the model onto one GPU wastes memory and contends for it, so the rollout runner
starts one :class:`GeneratorServer` in its own process (the policy module's
``shared_resources`` hook, made by :func:`make_shared_resources`), and every
worker's policy talks to it through a :class:`GeneratorClient` (the ``server=ADDRESS`` option of
the ``geo4d`` policy). Requests that arrive together (within ``batch_window_s`` of the first, up to
``max_batch``, same sampler steps) are sampled as one batch
(:meth:`~geo4d_policy.models.pipeline.Generator4D.predict_many`): on a GPU a batch of 8 costs
little more than one request, so throughput grows with the number of workers instead of
queueing them. Each request keeps its own seed, task and result, and the number of frames
its policy decodes (``decode_frames``): a batch decodes the most any of its requests asks for,
in one decoder call, and each reply carries its request's frames.

Speed (the GPU path): weights in bf16 (:func:`~geo4d_policy.policies.geo4d.load_generator`), and
with ``compile_unet`` a U-Net compiled with CUDA graphs (``torch.compile`` mode
``reduce-overhead``) that always runs at the server's ``max_batch`` (:class:`FixedBatchUNet`
pads smaller batches), so one graph serves every batch and nothing recompiles mid-run; the
server compiles it on a synthetic request before it reports ready. Fewer sampler steps are the
``num_steps`` policy option, never a default.

Failures: a request that fails alone fails only its own episode (the client raises). A GPU
out-of-memory is retried once request by request after freeing the allocator's cache; a request
that still does not fit gets :class:`GeneratorOutOfMemoryError` in its episode (the rollout
records ``error: GeneratorOutOfMemoryError: ...`` as its failure reason) and the server goes on.

Transport: ``multiprocessing.connection`` over a Unix socket in a private temporary directory,
authenticated with a random key that travels inside the address string
(``unix:/tmp/.../gen.sock#<hex key>``); arrays are pickled. The server refuses a request for a
task its checkpoint was not trained on with the same message a local model gives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Client, Listener
from typing import Any

import numpy as np


def _split_address(address: str) -> tuple[str, bytes]:
    if not address.startswith("unix:") or "#" not in address:
        raise ValueError(f"a generator server address looks like 'unix:/path/gen.sock#<key>', got {address!r}")
    path, _, key = address[len("unix:"):].partition("#")
    return path, bytes.fromhex(key)


class GeneratorOutOfMemoryError(RuntimeError):
    """The generator server ran out of GPU memory on this request (alone, after a retry)."""


def _is_out_of_memory(exc: BaseException) -> bool:
    """A GPU out-of-memory (torch's own type, or a CUDA/cuBLAS allocation failure by message)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text)


def _free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FixedBatchUNet:
    """Runs a (compiled) U-Net at one batch size: smaller batches are padded with copies of
    their first row, whose outputs are dropped.

    A CUDA-graph-compiled module records one graph per input shape, and recording one takes a
    minute: with episodes finishing and starting, the server sees every batch size from 1 to
    ``max_batch``, and each would compile anew mid-run. Padding costs little on a GPU (a batch
    of 8 of the small model costs about what one does) and changes no row's result: every row
    is computed independently, so a padded batch of one equals that request alone.

    Use :meth:`install` on a loaded generator; every other attribute goes to the wrapped U-Net.
    """

    def __init__(self, unet: Any, batch: int) -> None:
        self.__dict__["_inner"] = unet
        self.__dict__["batch"] = int(batch)

    @classmethod
    def install(cls, model: Any, batch: int) -> Any:
        """Put the wrapper in place of ``model.unet`` (returns ``model``)."""
        inner = model.unet
        # nn.Module keeps submodules in _modules; the wrapper is not one, so bypass its setattr.
        del model._modules["unet"]
        object.__setattr__(model, "unet", cls(inner, batch))
        return model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        b = args[0].shape[0]
        if b >= self.batch:
            return self._inner(*args, **kwargs)

        def pad(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == b:
                return torch.cat([x, x[:1].expand(self.batch - b, *x.shape[1:])])
            return x

        out = self._inner(*(pad(a) for a in args), **{k: pad(v) for k, v in kwargs.items()})
        # A CUDA-graph output buffer is overwritten by the next replay: keep a copy of the rows.
        return out[:b].clone()


def _first_frames(result: dict[str, Any], frames: int | None) -> dict[str, Any]:
    """``result`` with its decoded videos cut to their first ``frames`` frames (None: as they are)."""
    if frames is None:
        return result
    return {k: v[:, :frames] if k in ("rgb", "pointmaps") and v is not None else v for k, v in result.items()}


@dataclasses.dataclass
class _Pending:
    request: dict[str, Any]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None


class GeneratorServer:
    """Serves ``Generator4D.predict`` to clients (see the module docstring).

    Args:
        model: a loaded generator (its device is where predictions run).
        max_batch: most requests sampled together.
        batch_window_s: how long the first request of a batch waits for company.
    """

    def __init__(self, model: Any, *, max_batch: int = 8, batch_window_s: float = 0.02) -> None:
        if max_batch < 1 or batch_window_s < 0:
            raise ValueError("max_batch must be >= 1 and batch_window_s >= 0")
        self.model = model
        self.max_batch = int(max_batch)
        self.batch_window_s = float(batch_window_s)
        self._dir = tempfile.mkdtemp(prefix="geo4d-gen-")
        self._key = secrets.token_bytes(16)
        self._listener = Listener(os.path.join(self._dir, "gen.sock"), family="AF_UNIX", authkey=self._key)
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._closed = threading.Event()
        self.served = 0
        self.batches = 0
        self.busy_s = 0.0
        self.out_of_memory = 0
        threading.Thread(target=self._batch_loop, daemon=True).start()

    @property
    def address(self) -> str:
        return f"unix:{self._listener.address}#{self._key.hex()}"

    def serve_forever(self) -> None:
        """Accept clients until :meth:`close`; one thread per client, predictions batched."""
        while not self._closed.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                if self._closed.is_set():
                    return
                continue
            threading.Thread(target=self._serve_client, args=(conn,), daemon=True).start()

    def _serve_client(self, conn: Any) -> None:
        with conn:
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                pending = _Pending(request)
                self._queue.put(pending)
                pending.done.wait()
                try:
                    conn.send(pending.reply)
                except (OSError, BrokenPipeError):
                    return

    def _batch_loop(self) -> None:
        held: list[_Pending] = []  # requests of other sampler settings, first in the next batch
        while not self._closed.is_set():
            if not held:
                try:
                    held.append(self._queue.get(timeout=0.5))
                except queue.Empty:
                    continue
            first = held.pop(0)
            batch, deadline = [first], time.monotonic() + self.batch_window_s
            steps = first.request.get("num_steps")
            while len(batch) < self.max_batch:
                for p in list(held):
                    if len(batch) < self.max_batch and p.request.get("num_steps") == steps:
                        held.remove(p)
                        batch.append(p)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0:
                    break
                try:
                    p = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                (batch if p.request.get("num_steps") == steps else held).append(p)
            self._run(batch, steps)

    def _run(self, batch: list[_Pending], steps: int | None) -> None:
        t0 = time.perf_counter()
        requests = [{k: v for k, v in p.request.items() if k != "num_steps"} for p in batch]
        wanted = [r.pop("frames", None) for r in requests]
        try:
            frames = None if None in wanted else max(wanted)
            outs = self.model.predict_many(requests, num_steps=steps, frames=frames)
            replies = [{"ok": True, "result": _first_frames(out, f)} for out, f in zip(outs, wanted)]
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail its batch mates: retry alone
            if _is_out_of_memory(exc):
                self.out_of_memory += 1
                _free_gpu_cache()
            replies = [self._run_alone(req, steps, f) for req, f in zip(requests, wanted)]
        self.busy_s += time.perf_counter() - t0
        self.batches += 1
        self.served += sum(r["ok"] for r in replies)
        for p, reply in zip(batch, replies):
            p.reply = reply
            p.done.set()

    def _run_alone(self, request: dict[str, Any], steps: int | None, frames: int | None) -> dict[str, Any]:
        try:
            return {"ok": True, "result": self.model.predict_many([request], num_steps=steps, frames=frames)[0]}
        except Exception as exc:  # noqa: BLE001 - the client re-raises it in the episode
            if _is_out_of_memory(exc):
                self.out_of_memory += 1
                _free_gpu_cache()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return {"ok": False, "out_of_memory": True,
                        "error": f"the generator server ran out of GPU memory on this request alone ({first})"}
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def warm_up(self, request: dict[str, Any], *, num_steps: int = 2, timeout_s: float = 900.0) -> float:
        """Run ``request`` through the batch loop (its thread, where a CUDA-graph-compiled U-Net
        records its graphs) before serving; returns the seconds it took.

        Raises:
            RuntimeError: the warm-up prediction failed or did not finish in ``timeout_s``.
        """
        t0 = time.perf_counter()
        pending = _Pending({**request, "num_steps": num_steps})
        self._queue.put(pending)
        if not pending.done.wait(timeout_s):
            raise RuntimeError(f"the generator warm-up did not finish within {timeout_s:g} s")
        if not pending.reply["ok"]:
            raise RuntimeError(f"the generator warm-up failed: {pending.reply['error']}")
        self.served -= 1
        self.batches -= 1
        return time.perf_counter() - t0

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


class GeneratorClient:
    """A predictor (see ``geo4d_policy.policies.geo4d``) backed by a :class:`GeneratorServer`.

    Calling it raises :class:`GeneratorOutOfMemoryError` when the server ran out of GPU memory
    on the request, ``RuntimeError`` for any other failure of the request.

    Args:
        address: the server's address (``unix:PATH#KEY``).
        timeout_s: how long to wait for the server to accept.
        frames: decode only the first frames of each prediction (None: all; see
            :meth:`~geo4d_policy.models.pipeline.Generator4D.predict_many`).

    Raises:
        ValueError: malformed address.
        ConnectionError: no server at the address.
    """

    def __init__(self, address: str, *, timeout_s: float = 30.0, frames: int | None = None) -> None:
        self.frames = frames
        path, key = _split_address(address)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._conn = Client(path, family="AF_UNIX", authkey=key)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"no generator server at {path}: {e}") from e
                time.sleep(0.2)

    def __call__(self, inputs: Mapping[str, np.ndarray], *, task: str, seed: int,
                 num_steps: int | None) -> dict[str, Any]:
        self._conn.send({**inputs, "task": task, "seed": seed, "num_steps": num_steps, "frames": self.frames})
        reply = self._conn.recv()
        if not reply["ok"]:
            if reply.get("out_of_memory"):
                raise GeneratorOutOfMemoryError(reply["error"])
            raise RuntimeError(f"generator server: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()


def synthetic_request(model: Any, task: str) -> dict[str, Any]:
    """A request at the model's resolution (a flat scene 1 m ahead): what warm-up predicts."""
    h, w = model.config.height, model.config.width
    yy, xx = np.meshgrid(np.linspace(-0.3, 0.3, h), np.linspace(-0.4, 0.4, w), indexing="ij")
    pm = np.stack([xx, yy, np.ones_like(xx)], axis=-1).astype(np.float32)
    return {"rgb": np.full((2, h, w, 3), 128, dtype=np.uint8), "pointmap_n": pm, "pointmap_m": pm.copy(),
            "task": task, "seed": 0}


def start_server(checkpoint: str, *, device: str, compile_unet: bool = False, max_batch: int = 8,
                 batch_window_s: float = 0.02) -> tuple[GeneratorServer, float]:
    """Load the generator, start a :class:`GeneratorServer` serving it, and warm it up.

    With ``compile_unet`` (CUDA) the U-Net is compiled with CUDA graphs and runs every batch at
    ``max_batch`` (:class:`FixedBatchUNet`); the warm-up records its graph.

    Returns:
        The server (its address is ready for clients) and the warm-up seconds.
    """
    import torch

    from geo4d_policy.models.checkpoint import read_config_json
    from geo4d_policy.policies.geo4d import load_generator

    tasks = read_config_json(checkpoint, expect_format="geo4d-generator")["tasks"]
    model = load_generator(checkpoint, task=tasks[0], device=device, compile_unet=compile_unet)
    if compile_unet and str(device).startswith("cuda"):
        FixedBatchUNet.install(model, max_batch)
    torch.set_grad_enabled(False)
    server = GeneratorServer(model, max_batch=max_batch, batch_window_s=batch_window_s)
    warm = server.warm_up(synthetic_request(model, tasks[0])) if str(device).startswith("cuda") else 0.0
    return server, warm


def _server_main(checkpoint: str, device: str, compile_unet: bool, max_batch: int, conn: Any) -> None:
    try:
        server, warm = start_server(checkpoint, device=device, compile_unet=compile_unet, max_batch=max_batch)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run clearly
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    conn.send({"ok": True, "address": server.address, "warm_up_s": warm})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Runs until the parent terminates this process.
    while True:
        time.sleep(3600)


MAX_SERVER_BATCH = 8
"""Largest batch the shared server samples (up to the number of parallel episodes, at most this):
on an H100 a batch of 8 small-model requests costs about what one does, and keeping one size
lets every run reuse the compiled U-Net of the first (the inductor cache) instead of compiling
for its own worker count."""


def make_shared_resources(default_checkpoint: str | os.PathLike[str]):
    """The rollout-runner hook of a generator policy whose checkpoint defaults to ``default_checkpoint``.

    The hook, ``shared_resources(options, *, device, workers)``, is a context manager: with several
    workers on a GPU it starts one server process holding the model (``options["checkpoint"]`` or
    the default; ``options["compile_unet"]`` compiles it), batching up to ``workers`` requests
    (at most :data:`MAX_SERVER_BATCH`), and yields the extra policy options ``{"server": address}``;
    otherwise (CPU, one worker, or a server address already given) it yields ``{}``. Each client
    asks for the frames its policy decodes (``decode_frames``). It raises ``RuntimeError`` when the
    server cannot load the model.
    """

    @contextlib.contextmanager
    def shared_resources(options: Mapping[str, Any], *, device: str, workers: int) -> Iterator[dict[str, Any]]:
        if workers <= 1 or not str(device).startswith("cuda") or options.get("server"):
            yield {}
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        checkpoint = str(options.get("checkpoint") or default_checkpoint)
        max_batch = max(1, min(int(workers), MAX_SERVER_BATCH))
        proc = ctx.Process(target=_server_main, args=(checkpoint, str(device), bool(options.get("compile_unet", False)),
                                                      max_batch, child), daemon=True)
        proc.start()
        try:
            if not parent.poll(600):
                raise RuntimeError("the generator server did not start within 10 minutes")
            msg = parent.recv()
            if not msg["ok"]:
                raise RuntimeError(f"the generator server could not start: {msg['error']}")
            yield {"server": msg["address"]}
        finally:
            proc.terminate()
            proc.join(10)

    return shared_resources
