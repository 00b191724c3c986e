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
queueing them. Each request keeps its own seed, task and result.

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
        try:
            outs = self.model.predict_many(requests, num_steps=steps)
            replies = [{"ok": True, "result": out} for out in outs]
        except Exception:  # noqa: BLE001 - one bad request must not fail its batch mates: retry alone
            replies = []
            for req in requests:
                try:
                    replies.append({"ok": True, "result": self.model.predict_many([req], num_steps=steps)[0]})
                except Exception as exc:  # noqa: BLE001 - the client re-raises it in the episode
                    replies.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        self.busy_s += time.perf_counter() - t0
        self.batches += 1
        self.served += sum(r["ok"] for r in replies)
        for p, reply in zip(batch, replies):
            p.reply = reply
            p.done.set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


class GeneratorClient:
    """A predictor (see ``geo4d_policy.policies.geo4d``) backed by a :class:`GeneratorServer`.

    Raises:
        ValueError: malformed address.
        ConnectionError: no server at the address.
    """

    def __init__(self, address: str, *, timeout_s: float = 30.0) -> None:
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
        self._conn.send({**inputs, "task": task, "seed": seed, "num_steps": num_steps})
        reply = self._conn.recv()
        if not reply["ok"]:
            raise RuntimeError(f"generator server: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()


def _server_main(checkpoint: str, device: str, compile_unet: bool, conn: Any) -> None:
    from geo4d_policy.policies.geo4d import load_generator

    try:
        import torch

        from geo4d_policy.models.checkpoint import read_config_json

        tasks = read_config_json(checkpoint, expect_format="geo4d-generator")["tasks"]
        model = load_generator(checkpoint, task=tasks[0], device=device, compile_unet=compile_unet)
        torch.set_grad_enabled(False)
        server = GeneratorServer(model)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run clearly
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    conn.send({"ok": True, "address": server.address})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Runs until the parent terminates this process.
    while True:
        time.sleep(3600)


def make_shared_resources(default_checkpoint: str | os.PathLike[str]):
    """The rollout-runner hook of a generator policy whose checkpoint defaults to ``default_checkpoint``.

    The hook, ``shared_resources(options, *, device, workers)``, is a context manager: with several
    workers on a GPU it starts one server process holding the model (``options["checkpoint"]`` or
    the default) and yields the extra policy options ``{"server": address}``; otherwise (CPU, one
    worker, or a server address already given) it yields ``{}``. It raises ``RuntimeError`` when
    the server cannot load the model.
    """

    @contextlib.contextmanager
    def shared_resources(options: Mapping[str, Any], *, device: str, workers: int) -> Iterator[dict[str, Any]]:
        if workers <= 1 or not str(device).startswith("cuda") or options.get("server"):
            yield {}
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        checkpoint = str(options.get("checkpoint") or default_checkpoint)
        proc = ctx.Process(target=_server_main, args=(checkpoint, str(device),
                                                      bool(options.get("compile_unet", False)), child), daemon=True)
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
