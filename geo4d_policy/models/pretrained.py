"""``PretrainedModel``: the one base of every saved model (VAE, generator, Diffusion Policy, segmenter).

Owns what a checkpoint directory (:mod:`geo4d_policy.models.checkpoint`: ``config.json`` +
``model.safetensors``, written atomically) means for a model, and every refusal on loading:

* ``config.json`` = ``{"format", "version", "dtype", <config field>, ["task", "tasks"],
  <required fields>, <family fields>, <extra>}``: the family's format name and format version,
  the storage dtype, the typed model config under ``config_field``, the trained tasks of
  task-conditioned families (``task`` is the single task or ``"multi"``), the fields a loader
  requires (e.g. the segmenter's class layout), what :meth:`PretrainedModel.checkpoint_fields`
  adds (normalisation statistics...) and the caller's ``extra`` (training metadata, evaluations).
* :meth:`~PretrainedModel.save_pretrained`: weights in their dtype, cast (``torch.float16`` to
  ship) or per-row int8 (:func:`~geo4d_policy.models.checkpoint.quantize_int8`; a family's
  ``int8_keep_prefixes`` stay fp16). The ``training`` record of the checkpoint a model was loaded
  from (recipe, step, the data seeds it has seen) is kept through re-saving, so an exported model
  still tells which episodes it was trained on.
* :meth:`~PretrainedModel.from_pretrained`: a checkpoint or run directory (its ``last`` step) ->
  the model in eval mode, refusing with :class:`CheckpointError` and a message naming what is
  wrong: another format, another format version (an older one the family still reads, listed in
  ``legacy_versions``, goes through :meth:`~PretrainedModel.check_checkpoint_config`, which
  repairs it with a warning or, with ``legacy="refuse"``, refuses it), a task it was not trained on, a config that
  differs from the one expected (every differing key), a ``config.json`` field that differs
  from the one required (e.g. a VAE's ``kind``), weights that do not match the stored config
  (missing, unexpected or mis-shaped tensors).
* :meth:`~PretrainedModel.resolve_task`: the trained task a request names (None: the only one).

A family subclasses it (with ``nn.Module``'s own ``__init__``, taking its config first and, when
task-conditioned, ``trained_tasks=``) and declares its class attributes; families with more
``config.json`` state add :meth:`checkpoint_fields` and :meth:`init_kwargs`. The rest is shared.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from geo4d_policy.config import from_dict, to_dict
from geo4d_policy.models.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    load_weights,
    quantize_int8,
    read_config_json,
    resolve_checkpoint_dir,
    state_dict_for_saving,
    write_checkpoint_dir,
)
from geo4d_policy.models.config import config_differences

M = TypeVar("M", bound="PretrainedModel")

LegacyRule = Literal["repair", "refuse"]
"""What loading does with a checkpoint of a ``legacy_versions`` format: repair it (with a warning
naming what was repaired, where there is something to repair) or refuse it."""


def canonical_task(name: str) -> str:
    """CamelCase task name for known tasks (snake_case accepted); other names pass through."""
    from geo4d_policy.interface import UnknownNameError, canonical_task_name

    try:
        return canonical_task_name(name)
    except UnknownNameError:
        return name


def checked_trained_tasks(trained: Sequence[str], table: Sequence[str]) -> tuple[str, ...]:
    """Canonical ``trained`` tasks, each of which must be in the model's task ``table``.

    Raises:
        ValueError: a trained task is not in the table (the message lists the table).
    """
    tasks = tuple(canonical_task(t) for t in trained)
    unknown = [t for t in tasks if t not in table]
    if unknown:
        raise ValueError(f"trained task(s) {unknown} are not in the model's task table {list(table)}")
    return tasks


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class PretrainedModel(nn.Module):
    """A model saved as a checkpoint directory; see the module docstring for the rules.

    Class attributes a family sets:
        checkpoint_format: the ``format`` name in ``config.json``.
        format_version: the version this code writes and reads.
        legacy_versions: older versions it still reads, through :meth:`check_checkpoint_config`.
        family: how messages name the model (``"generator"``, ``"Diffusion Policy"``...).
        config_type, config_field: the config dataclass and its ``config.json`` key.
        task_conditioned: the model has trained tasks (``trained_tasks=`` of ``__init__``).
        required_fields: ``config.json`` fields written as given and required to load (e.g.
            the segmenter's class layout).
        config_ignore: config keys left out when comparing with an expected config (values
            measured on data, such as the VAE latent scales).
        int8_keep_prefixes: weights kept fp16 when saving in int8 (e.g. autoencoders).

    Instance attributes:
        config: the model's typed config.
        trained_tasks: tasks of a task-conditioned model (empty for the others).
        training_record: ``config.json``'s ``training`` entry of the checkpoint it was loaded
            from (None for a new model).
    """

    checkpoint_format: ClassVar[str]
    format_version: ClassVar[int] = 1
    legacy_versions: ClassVar[tuple[int, ...]] = ()
    family: ClassVar[str] = "model"
    config_type: ClassVar[type]
    config_field: ClassVar[str] = "model"
    task_conditioned: ClassVar[bool] = False
    required_fields: ClassVar[Mapping[str, Any]] = {}
    config_ignore: ClassVar[frozenset[str]] = frozenset()
    int8_keep_prefixes: ClassVar[tuple[str, ...]] = ()

    config: Any
    trained_tasks: tuple[str, ...] = ()
    training_record: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------------
    # What a family may extend
    # ---------------------------------------------------------------------------------------

    def checkpoint_fields(self) -> dict[str, Any]:
        """The family's ``config.json`` entries besides its config and tasks (default none)."""
        return {}

    @classmethod
    def init_kwargs(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``__init__`` keyword arguments (besides the config) from a ``config.json``'s content."""
        return {"trained_tasks": tuple(data["tasks"])} if cls.task_conditioned else {}

    @classmethod
    def from_checkpoint_fields(cls: type[M], data: Mapping[str, Any], *, where: Path) -> M:
        """An untrained model built from a ``config.json``'s content (weights come next)."""
        config = from_dict(cls.config_type, data[cls.config_field], where=f"{where}/{CONFIG_NAME}:{cls.config_field}")
        return cls(config, **cls.init_kwargs(data))

    @classmethod
    def check_checkpoint_config(cls, data: dict[str, Any], *, where: Path, legacy: LegacyRule) -> dict[str, Any]:
        """A ``config.json`` of this format (the current or a legacy version) -> the content to
        load, as the current version; refuses (:class:`CheckpointError`) what cannot load.

        The default accepts the current version unchanged. A family with ``legacy_versions``
        overrides it to repair those (warning about what it changed) or, with ``legacy="refuse"``,
        to refuse what would need repairing.
        """
        return data

    def weights_module(self) -> nn.Module:
        """The module whose state dict ``model.safetensors`` holds (default: the whole model)."""
        return self

    # ---------------------------------------------------------------------------------------
    # Tasks
    # ---------------------------------------------------------------------------------------

    def resolve_task(self, task: str | None) -> str:
        """The canonical trained task for ``task`` (None: the only trained task).

        Raises:
            ValueError: a task the model was not trained on, or None for a multi-task model.
        """
        if task is None:
            if len(self.trained_tasks) != 1:
                raise ValueError(f"this model was trained on several tasks {list(self.trained_tasks)}: pass task=")
            return self.trained_tasks[0]
        t = canonical_task(task)
        if t not in self.trained_tasks:
            raise ValueError(f"this model was trained on {list(self.trained_tasks)}, not on {t!r}")
        return t

    # ---------------------------------------------------------------------------------------
    # Save
    # ---------------------------------------------------------------------------------------

    def checkpoint_config(self, *, extra: Mapping[str, Any] | None = None,
                          dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The ``config.json`` content (``dtype``: the storage dtype; default the weights')."""
        if dtype is None:
            floats = [v.dtype for v in self.weights_module().state_dict().values() if v.is_floating_point()]
            dtype = floats[0] if floats else torch.float32
        data: dict[str, Any] = {"format": self.checkpoint_format, "version": self.format_version,
                                "dtype": _dtype_name(dtype), self.config_field: to_dict(self.config),
                                **self.required_fields}
        if self.task_conditioned:
            data["task"] = self.trained_tasks[0] if len(self.trained_tasks) == 1 else "multi"
            data["tasks"] = list(self.trained_tasks)
        data.update(self.checkpoint_fields())
        if self.training_record is not None:
            data["training"] = self.training_record
        data.update(extra or {})
        return data

    def save_pretrained(self, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None,
                        dtype: torch.dtype | None = None,
                        extra_writer: Callable[[Path], None] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into directory ``path`` (replaced atomically).

        Args:
            path: the checkpoint directory.
            extra: more ``config.json`` entries (training metadata, evaluations).
            dtype: storage dtype of the floating-point weights: None keeps them as they are,
                ``torch.float16`` halves them (to ship), ``torch.int8`` stores large matrices
                as int8 with per-row scales. :meth:`from_pretrained` reads any of them.
            extra_writer: ``f(tmp_dir)`` adding files (e.g. training state) before the
                directory is renamed into place.

        Returns:
            The checkpoint directory.
        """
        tensors = state_dict_for_saving(self.weights_module())
        if dtype == torch.int8:
            tensors = quantize_int8(tensors, keep_prefixes=self.int8_keep_prefixes)
        elif dtype is not None:
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
        return write_checkpoint_dir(path, self.checkpoint_config(extra=extra, dtype=dtype), tensors,
                                    extra_writer=extra_writer)

    # ---------------------------------------------------------------------------------------
    # Load
    # ---------------------------------------------------------------------------------------

    @classmethod
    def read_checkpoint_config(cls, path: str | os.PathLike[str], *, legacy: LegacyRule = "repair"
                               ) -> tuple[Path, dict[str, Any]]:
        """(checkpoint directory, ``config.json``) of ``path``, checked for format and version and
        passed through :meth:`check_checkpoint_config` (``legacy``: see :data:`LegacyRule`).

        Raises:
            CheckpointError: not a checkpoint, another format, a format version this code does
                not read, or what :meth:`check_checkpoint_config` refuses.
        """
        if legacy not in ("repair", "refuse"):
            raise ValueError(f"legacy must be 'repair' or 'refuse', got {legacy!r}")
        data = read_config_json(path, expect_format=cls.checkpoint_format)
        where = resolve_checkpoint_dir(path)
        readable = (cls.format_version, *cls.legacy_versions)
        if data.get("version") not in readable:
            legacy_note = f" (and legacy {', '.join(map(str, cls.legacy_versions))})" if cls.legacy_versions else ""
            raise CheckpointError(f"{where}: {cls.family} checkpoint format version {data.get('version')}, "
                                  f"this code reads version {cls.format_version}{legacy_note}")
        return where, cls.check_checkpoint_config(data, where=where, legacy=legacy)

    @classmethod
    def from_pretrained(cls: type[M], path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, task: str | None = None, config: Any = None,
                        expect: Mapping[str, Any] | None = None, legacy: LegacyRule = "repair") -> M:
        """Load a model saved by :meth:`save_pretrained` (a step directory or a run directory).

        Args:
            path: checkpoint directory, or a run directory whose ``last`` file names one.
            device: where to put the model.
            dtype: parameter dtype after loading (fp16/int8-stored weights become float32 by
                default; bfloat16/float16 for GPU inference).
            task: refuse the checkpoint unless it was trained on this task.
            config: refuse the checkpoint unless its model config equals this one (the
                family's ``config_ignore`` keys excepted).
            expect: ``config.json`` fields that must hold these values (besides the family's
                ``required_fields``).
            legacy: a checkpoint of one of the family's ``legacy_versions`` is repaired (with a
                warning naming what changed) or refused (``"refuse"``); see
                :meth:`check_checkpoint_config`.

        Raises:
            CheckpointError: another format or format version, a task it was not trained on, a
                differing config or required field, weights that do not match the stored
                config, or a legacy checkpoint refused; the message names what differs.
        """
        where, data = cls.read_checkpoint_config(path, legacy=legacy)
        for key, value in {**cls.required_fields, **(expect or {})}.items():
            if data.get(key) != value:
                raise CheckpointError(f"{where} holds a {cls.family} with {key} {data.get(key)!r}, "
                                      f"not the {value!r} that was asked for")
        if task is not None:
            tasks = data.get("tasks")
            if tasks is None:
                raise CheckpointError(f"{where}: this {cls.family} checkpoint records no trained tasks")
            if canonical_task(task) not in tasks:
                raise CheckpointError(f"{where} is a {cls.family} for {', '.join(tasks)}; "
                                      f"it was not trained on {canonical_task(task)!r}")
        model = cls.from_checkpoint_fields(data, where=where)
        if config is not None:
            diff = config_differences(config, model.config, ignore=cls.config_ignore)
            if diff:
                raise CheckpointError(f"{where} was trained with another {cls.family} config:\n  "
                                      + "\n  ".join(diff))
        model.load_checkpoint_weights(where)
        model.training_record = data.get("training")
        return model.to(device=device, dtype=dtype).eval()

    def load_checkpoint_weights(self, path: str | os.PathLike[str]) -> None:
        """Load ``model.safetensors`` of ``path`` into :meth:`weights_module`, every tensor matching.

        Raises:
            CheckpointError: missing, unexpected or mis-shaped tensors.
        """
        module = self.weights_module()
        state = load_weights(path)
        own = module.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise CheckpointError(f"{path}: weights do not match the config: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}, other shapes {shapes[:5]}")
        module.load_state_dict(state)

    @classmethod
    def export_pretrained(cls, src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                          dtype: torch.dtype | None = torch.float16,
                          extra: Mapping[str, Any] | None = None) -> Path:
        """Copy a run's (or step's) weights to ``dst`` in ``dtype`` without training state (to ship).

        The source's own ``config.json`` entries (training metadata) are kept; ``extra`` adds more.
        """
        model = cls.from_pretrained(src)
        with warnings.catch_warnings():  # a legacy source's repair was reported by from_pretrained
            warnings.simplefilter("ignore")
            _, info = cls.read_checkpoint_config(src)
        own = model.checkpoint_config()
        keep = {k: v for k, v in info.items() if k not in own}
        return model.save_pretrained(dst, extra={**keep, **(extra or {})}, dtype=dtype)
