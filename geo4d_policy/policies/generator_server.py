"""One generator shared by parallel rollout workers: a small local prediction server and its client.

``geo4d-rollout --policy geo4d --workers 8 --device cuda`` runs eight episode processes; loading
eight copies of the model onto one GPU wastes memory and contends for it, so the rollout runner
starts one :class:`GeneratorServer` in its own process (the policy module's
``shared_resources`` hook, made by :func:`make_shared_resources`), and every
worker's policy talks to it through a :class:`GeneratorClient` (the ``server=ADDRESS`` option of
the ``geo4d`` policy). Requests are served one at a time in arrival order on the server's device.

Transport: ``multiprocessing.connection`` over a Unix socket in a private temporary directory,
authenticated with a random key that travels inside the address string
(``unix:/tmp/.../gen.sock#<hex key>``); arrays are pickled. The server refuses a request for a
task its checkpoint was not trained on with the same message a local model gives.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
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


class GeneratorServer:
    """Serves ``Generator4D.predict`` to clients (see the module docstring).

    Args:
        model: a loaded generator (its device is where predictions run).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._dir = tempfile.mkdtemp(prefix="geo4d-gen-")
        self._key = secrets.token_bytes(16)
        self._listener = Listener(os.path.join(self._dir, "gen.sock"), family="AF_UNIX", authkey=self._key)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.served = 0
        self.busy_s = 0.0

    @property
    def address(self) -> str:
        return f"unix:{self._listener.address}#{self._key.hex()}"

    def serve_forever(self) -> None:
        """Accept clients until :meth:`close`; one thread per client, predictions serialised."""
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
                try:
                    with self._lock:
                        t0 = time.perf_counter()
                        out = self.model.predict(**request)
                        self.busy_s += time.perf_counter() - t0
                        self.served += 1
                    reply: dict[str, Any] = {"ok": True, "result": out}
                except Exception as exc:  # noqa: BLE001 - the client re-raises it in the episode
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                try:
                    conn.send(reply)
                except (OSError, BrokenPipeError):
                    return

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
