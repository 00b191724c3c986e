"""Provenance of every result: code version, resolved configuration, seeds, device, packages.

Every command that writes a result (``geo4d-rollout``, ``geo4d-collect``, ``geo4d-train``,
``geo4d-eval-video``, ``geo4d-eval-tracking``) writes ``provenance.json`` next to it with
:func:`write_provenance`; a run that can be resumed checks it first with
:func:`check_resume`, which refuses a run whose code version or resolved configuration
differs from the requested one unless told to continue anyway (and then records that it did).

``provenance.json``::

    format          "geo4d-provenance/1"
    command         e.g. "geo4d-rollout"
    code            the run's code version (first session): see :func:`code_version`
    config          the fully resolved configuration (first session); ``config_digest`` its hash
    configs         config_digest -> configuration, for every configuration a session ran with
    seeds           base seed(s) and seed stream
    device, packages  of the first session
    sessions        one entry per session (started, argv, code, config_digest, device,
                    packages, resumed_anyway: the differences accepted, or null)

Per-item records (e.g. a rollout's episodes) carry :func:`record_reference`: the commit, whether
the checkout was modified, the code and configuration digests and the session index, which
lead back here.

Code version: a hash of the sources and configs (:func:`tree_digest`; what a resume compares,
so the same code is recognised in a copy of the tree without git, e.g. on another machine), the
git commit of the checkout this package runs from and whether tracked files were modified.
Outside a git checkout the environment variable ``GEO4D_CODE_VERSION`` may name the commit.
Nothing heavy is imported here: package versions come from the installed distributions'
metadata, and torch only when a CUDA device is named.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from geo4d_policy.config import REPO_ROOT, atomic_write_text, to_dict

PROVENANCE_FILE = "provenance.json"
FORMAT = "geo4d-provenance/1"
CODE_VERSION_ENV = "GEO4D_CODE_VERSION"
PACKAGES = ("torch", "drake", "numpy", "diffusers", "geo4d-policy")
"""Distributions whose versions every record names (besides Python)."""

MAX_LISTED_DIFFERENCES = 12


class ProvenanceMismatch(ValueError):
    """A run that would be continued with other code or another configuration than it started with."""

    def __init__(self, message: str, differences: Sequence[str]) -> None:
        super().__init__(message)
        self.differences = list(differences)


def _git(*args: str, cwd: Path) -> bytes | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


CODE_GLOBS = (("geo4d_policy", "*.py"), ("sim", "*.py"), ("configs", "*.yaml"))
"""What :func:`tree_digest` hashes: the two packages' sources and the configs (under the root)."""


def tree_digest(root: str | os.PathLike[str] = REPO_ROOT) -> str:
    """sha256 over the code and configs under ``root`` (see :data:`CODE_GLOBS`): the same code
    gives the same digest with or without git (a copy of the tree on another machine)."""
    root = Path(root)
    h = hashlib.sha256()
    for folder, pattern in CODE_GLOBS:
        for f in sorted((root / folder).rglob(pattern)):
            if "__pycache__" in f.parts or not f.is_file():
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_version(root: str | os.PathLike[str] = REPO_ROOT) -> dict[str, Any]:
    """The version of the code running now.

    Returns:
        ``{"source", "commit", "dirty", "tree_sha256", "package_version"}``. ``tree_sha256``
        (:func:`tree_digest`) is what a resume compares. ``source`` is ``"git"`` (``commit`` the
        full hash of the checkout this package lives in, ``dirty`` whether tracked files differ
        from it), else ``"env"`` (``commit`` from ``GEO4D_CODE_VERSION``, e.g. set for a copy of
        the tree made for another machine) or ``"none"`` (``commit`` and ``dirty`` None).
    """
    root = Path(root)
    out: dict[str, Any] = {"source": "none", "commit": None, "dirty": None, "tree_sha256": tree_digest(root),
                           "package_version": _distribution_version("geo4d-policy")}
    top = _git("rev-parse", "--show-toplevel", cwd=root)
    # Only the checkout this package lives in counts (not an unrelated repository around it).
    if top is not None and Path(top.decode().strip()).resolve() == root.resolve():
        commit = _git("rev-parse", "HEAD", cwd=root)
        status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
        if commit is not None and status is not None:
            return {**out, "source": "git", "commit": commit.decode().strip(), "dirty": bool(status.strip())}
    if os.environ.get(CODE_VERSION_ENV):
        return {**out, "source": "env", "commit": os.environ[CODE_VERSION_ENV].strip()}
    return out


def describe_code(code: Mapping[str, Any]) -> str:
    """One line: ``"1a2b3c4d5e6f, modified (tree 0123abcd)"``, ``"no git checkout (tree 0123abcd)"``."""
    tree = f"tree {str(code.get('tree_sha256'))[:8]}"
    if not code.get("commit"):
        return f"no git checkout ({tree})"
    text = str(code["commit"])[:12]
    if code.get("source") == "env":
        return f"{text} from {CODE_VERSION_ENV} ({tree})"
    return f"{text}{', modified' if code.get('dirty') else ''} ({tree})"


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Python's version and the installed versions of ``names`` (None when not installed)."""
    return {"python": platform.python_version(), **{n: _distribution_version(n) for n in names}}


def device_info(device: str | None = None) -> dict[str, Any]:
    """The machine and the torch device a command ran on (a CUDA device is named only when one
    was asked for: that needs torch, which a CPU run may never import)."""
    info: dict[str, Any] = {"requested": device, "host": socket.gethostname(), "platform": platform.platform(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count()}
    if device is not None and str(device).startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                index = torch.device(device).index or 0
                info["gpu"] = torch.cuda.get_device_name(index)
                info["cuda"] = torch.version.cuda
        except Exception as e:  # noqa: BLE001 - provenance must not stop a run
            info["gpu_error"] = f"{type(e).__name__}: {e}"
    return info


def config_digest(config: Any) -> str:
    """A short stable hash of a (resolved) configuration."""
    text = json.dumps(to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 over the files under ``path`` (names and contents; a file hashes alone), None if absent.

    Used to pin checkpoints a configuration names by path: the path alone says nothing about
    what was in it.
    """
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def new_provenance(*, command: str, config: Any, seeds: Mapping[str, Any], device: str | None = None,
                   argv: Sequence[str] | None = None, code: Mapping[str, Any] | None = None,
                   session_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The provenance of a command starting now.

    Args:
        command: the command's name (``geo4d-rollout`` ...).
        config: its fully resolved configuration (a dataclass or a plain mapping); what a resume
            compares, so it holds settings, not where things are (paths of outputs, devices).
        seeds: base seed(s) and ``seed_stream``.
        device: torch device asked for.
        argv: the command line (default ``sys.argv``).
        code: the code version (default: :func:`code_version`).
        session_info: more facts about this session, recorded, not compared (e.g. the file the
            configuration was read from).
    """
    cfg = to_dict(config)
    code = dict(code or code_version())
    digest = config_digest(cfg)
    dev, pkgs = device_info(device), package_versions()
    session = {"started": now(), "argv": list(sys.argv if argv is None else argv), "code": code,
               "config_digest": digest, "device": dev, "packages": pkgs, **to_dict(dict(session_info or {})),
               "resumed_anyway": None}
    return {
        "format": FORMAT, "command": command, "created": session["started"], "code": code, "config": cfg,
        "config_digest": digest, "configs": {digest: cfg}, "seeds": dict(seeds), "device": dev, "packages": pkgs,
        "sessions": [session],
    }


def read_provenance(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``out_dir/provenance.json``, or None when there is none."""
    path = Path(out_dir) / PROVENANCE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a provenance record of format {FORMAT!r}")
    return data


def write_provenance(out_dir: str | os.PathLike[str], provenance: Mapping[str, Any]) -> Path:
    """Atomically write ``out_dir/provenance.json``."""
    path = Path(out_dir) / PROVENANCE_FILE
    atomic_write_text(path, json.dumps(provenance, indent=1, default=str) + "\n")
    return path


def differences(saved: Any, now_: Any, *, prefix: str = "") -> list[str]:
    """Dotted paths where two plain configurations differ, ``"path: RUN -> NOW"`` each."""
    if isinstance(saved, Mapping) and isinstance(now_, Mapping):
        out = []
        for key in list(saved) + [k for k in now_ if k not in saved]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in now_:
                out.append(f"{path}: {saved[key]!r} -> (absent)")
            elif key not in saved:
                out.append(f"{path}: (absent) -> {now_[key]!r}")
            else:
                out.extend(differences(saved[key], now_[key], prefix=path))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(now_, (list, tuple)):
        saved, now_ = list(saved), list(now_)
    return [] if saved == now_ else [f"{prefix or '(value)'}: {saved!r} -> {now_!r}"]


def code_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Why two code versions are not the same code (empty when their trees hash the same)."""
    if saved.get("tree_sha256") and saved.get("tree_sha256") == current.get("tree_sha256"):
        return []
    return [f"code: {describe_code(saved)} -> {describe_code(current)}"]


def check_resume(out_dir: str | os.PathLike[str], current: dict[str, Any], *, anyway: bool = False,
                 what: str = "run") -> dict[str, Any]:
    """Check that ``current`` (from :func:`new_provenance`) may continue the run in ``out_dir``.

    Returns:
        The provenance to write: the run's record with a session appended (``current`` itself
        when the directory has none yet and ``anyway`` was given, or for a fresh run).

    Raises:
        ProvenanceMismatch: the code version or the configuration differs, or the run has no
            provenance record, and ``anyway`` is false; the message names what differs.
    """
    saved = read_provenance(out_dir)
    if saved is None:
        diffs = [f"{Path(out_dir) / PROVENANCE_FILE} is missing (a run made before provenance was recorded); "
                 "its code version and configuration cannot be checked"]
    else:
        diffs = code_differences(saved["code"], current["code"])
        diffs += [f"config.{d}" for d in differences(saved["config"], current["config"])]
        diffs += [f"seeds.{d}" for d in differences(saved.get("seeds", {}), current["seeds"])]
    if diffs and not anyway:
        listed = diffs[:MAX_LISTED_DIFFERENCES]
        more = f"; and {len(diffs) - len(listed)} more" if len(diffs) > len(listed) else ""
        raise ProvenanceMismatch(
            f"cannot resume the {what} in {out_dir}: it differs from this session in "
            f"{'; '.join(listed)}{more}. Resume with the same code and configuration, choose another "
            "output directory, or pass --resume-anyway to continue it (recorded in its provenance.json)",
            diffs)
    session = dict(current["sessions"][-1], resumed_anyway=diffs if diffs else None)
    if saved is None:
        return {**current, "sessions": [session]}
    merged = dict(saved)
    merged["configs"] = {**saved.get("configs", {}), current["config_digest"]: current["config"]}
    merged["sessions"] = [*saved.get("sessions", []), session]
    return merged


def record_reference(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """What each per-item record carries of its session's provenance (see the module docstring)."""
    session = provenance["sessions"][-1]
    code = session["code"]
    return {"commit": code.get("commit"), "dirty": code.get("dirty"), "tree": str(code.get("tree_sha256"))[:16],
            "config_digest": session["config_digest"], "session": len(provenance["sessions"]) - 1}


def data_identity(data_dirs: Iterable[str | os.PathLike[str]]) -> list[str | None]:
    """What identifies datasets in a configuration: the hash of each one's ``meta.json`` (its
    episode index), not its path (the same data sits at other paths on other machines)."""
    return [path_digest(Path(d) / "meta.json") for d in data_dirs]


def start_provenance(out_dir: str | os.PathLike[str], *, command: str, config: Any, seeds: Mapping[str, Any],
                     device: str | None = None, has_run: bool = False, resume: bool = False,
                     anyway: bool = False, session_info: Mapping[str, Any] | None = None,
                     what: str = "run", write: bool = True) -> dict[str, Any] | None:
    """Record a command's provenance in ``out_dir`` as it starts (see :func:`new_provenance`).

    Args:
        has_run: ``out_dir`` already holds a result of this command.
        resume: the command continues it; the run's provenance is checked first
            (:func:`check_resume`) and this session appended.
        anyway: continue even if code or configuration differ (recorded).
        write: write the record; False only checks it (the other processes of a multi-process run).

    Returns:
        What was written, or None when ``has_run`` and not ``resume`` (the command refuses to
        overwrite the run on its own; nothing is touched).

    Raises:
        ProvenanceMismatch: see :func:`check_resume`.
    """
    current = new_provenance(command=command, config=config, seeds=seeds, device=device, session_info=session_info)
    if has_run and not resume:
        return None
    record = check_resume(out_dir, current, anyway=anyway, what=what) if has_run else current
    if write:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_provenance(out_dir, record)
    return record
