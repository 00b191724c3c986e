"""Training, evaluation and export of the gripper part segmenter (:mod:`geo4d_policy.perception.segmenter`).

Split along its seams; the names below are the public API (``from geo4d_policy.train.segmenter
import ...``):

  * :mod:`.augment`: :class:`ColorJitter`, :class:`Degradation` (generated-frame blur /
    resampling / noise), :data:`EVAL_DEGRADATION`, :func:`jitter_image`, :func:`gaussian_blur`,
    :func:`degrade_image`;
  * :mod:`.dataset`: :class:`SegmentationFrameDataset` (single camera frames + per-pixel class
    targets of a geo4d-collect dataset), :func:`frame_datasets`, :func:`class_frequencies`,
    :func:`class_weights`;
  * :mod:`.evaluation`: :func:`evaluate_segmenter` (per-class IoU), :func:`evaluate_checkpoint`;
  * :mod:`.training`: :class:`SegmenterTrainConfig` (``configs/segmenter/*.yaml``),
    :func:`load_segmenter_train_config`, :func:`train_segmenter`;
  * :mod:`.export`: :func:`export_segmenter` (a run's last checkpoint, fp16, with its evaluation).

Run directory (the conventions of :mod:`geo4d_policy.train.state`)::

    out_dir/
      train_config.yaml        the resolved SegmenterTrainConfig
      metrics.jsonl            loss / lr / s_per_step every ``log_every`` steps, held-out IoU
                               every ``eval_every`` steps
      last                     name of the newest step directory
      step_<N>/                config.json + model.safetensors (EMA weights, loadable by
                               GripperSegmenter.from_pretrained) + training_state/
      eval_heldout.json        the final held-out evaluation
"""

from geo4d_policy.train.segmenter.augment import (
    EVAL_DEGRADATION,
    ColorJitter,
    Degradation,
    degrade_image,
    gaussian_blur,
    jitter_image,
)
from geo4d_policy.train.segmenter.dataset import (
    SegmentationFrameDataset,
    class_frequencies,
    class_weights,
    frame_datasets,
)
from geo4d_policy.train.segmenter.evaluation import evaluate_checkpoint, evaluate_segmenter
from geo4d_policy.train.segmenter.export import export_segmenter
from geo4d_policy.train.segmenter.training import (
    SEGMENTER_CONFIG_DIR,
    SegmenterTrainConfig,
    SegmenterTrainResult,
    load_segmenter_train_config,
    train_segmenter,
)

__all__ = [
    "EVAL_DEGRADATION",
    "SEGMENTER_CONFIG_DIR",
    "ColorJitter",
    "Degradation",
    "SegmentationFrameDataset",
    "SegmenterTrainConfig",
    "SegmenterTrainResult",
    "class_frequencies",
    "class_weights",
    "degrade_image",
    "evaluate_checkpoint",
    "evaluate_segmenter",
    "export_segmenter",
    "frame_datasets",
    "gaussian_blur",
    "jitter_image",
    "load_segmenter_train_config",
    "train_segmenter",
]
