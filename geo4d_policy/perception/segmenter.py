"""Per-pixel gripper part segmentation from RGB: the model, its checkpoints and its metrics.

This module owns:
  * the class layout: 0 background, then one class per packed mask bit of
    :mod:`geo4d_policy.data.masks` (class ``1 + bit``: left palm, left arm's left finger, left
    arm's right finger, right palm, right arm's left finger, right arm's right finger), and the
    conversions between packed masks, class images and the tracker's per-arm part codes
    (:func:`classes_from_packed_masks`, :func:`part_labels_for_arm`, :func:`gripper_mask_for_arm`);
  * :class:`SegmenterConfig` and :class:`GripperSegmenter`, a small convolutional U-Net
    (``predict`` on uint8 images, ``save_pretrained`` / ``from_pretrained`` checkpoint
    directories through :mod:`geo4d_policy.models.pretrained`);
  * :func:`confusion_matrix` / :func:`iou_from_confusion`, the per-class IoU used to report it.

Why a learned segmenter: in simulation the first-frame masks come from label images, but a
policy on generated (or real) RGB has none; the tracker needs part labels on the first frame
(:func:`geo4d_policy.perception.pose_tracker.track_gripper_sequence`). SAM2 is the heavyweight
alternative (:mod:`.sam2_adapter`); this one is trained on our own data and runs on the CPU.

Architecture: ``levels`` resolution levels, each two 3x3 conv + GroupNorm + SiLU blocks,
2x2 max-pool down, bilinear up with skip concatenation, a 1x1 head. Inputs whose size is not
a multiple of ``2 ** (levels - 1)`` are padded (edge replication) and the logits cropped back.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geo4d_policy.config import ConfigError
from geo4d_policy.data.masks import GRIPPER_PARTS, MASK_BITS
from geo4d_policy.interface import ARM_NAMES
from geo4d_policy.models.pretrained import PretrainedModel

SEGMENTER_FORMAT = "geo4d-gripper-segmenter"
SEGMENTER_VERSION = 1

CLASS_NAMES: tuple[str, ...] = ("background", *sorted(MASK_BITS, key=MASK_BITS.__getitem__))
"""Class id -> name: ``background`` then the ``MASK_BITS`` keys in bit order (class = bit + 1)."""

NUM_CLASSES = len(CLASS_NAMES)


def class_id(arm: str, part: str) -> int:
    """Class id of one arm's part (``part`` in :data:`~geo4d_policy.data.masks.GRIPPER_PARTS`)."""
    key = f"{arm}_{part}"
    if key not in MASK_BITS:
        raise KeyError(f"unknown gripper part {key!r}; known: {sorted(MASK_BITS)}")
    return 1 + MASK_BITS[key]


# --------------------------------------------------------------------------------------------
# Label conversions
# --------------------------------------------------------------------------------------------


def _packed_to_class_table() -> np.ndarray:
    # Lowest defined bit of every byte value -> class (0 when no gripper bit is set).
    table = np.zeros(256, dtype=np.int64)
    for value in range(256):
        bits = [b for b in sorted(MASK_BITS.values()) if value & (1 << b)]
        table[value] = 1 + bits[0] if bits else 0
    return table


_PACKED_TO_CLASS = _packed_to_class_table()


def classes_from_packed_masks(packed: np.ndarray) -> np.ndarray:
    """Class ids (int64, same shape) of packed part masks.

    Label images give each pixel one body, so at most one bit is set; if several are (a
    hand-built mask), the lowest bit wins, deterministically.
    """
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed masks must be uint8, got {packed.dtype}")
    return _PACKED_TO_CLASS[packed]


def _check_classes(classes: np.ndarray) -> np.ndarray:
    classes = np.asarray(classes)
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"class images must be integer, got {classes.dtype}")
    return classes


def part_labels_for_arm(classes: np.ndarray, arm: str) -> np.ndarray:
    """The tracker's part codes of one arm from class ids (any shape, e.g. (N, H, W)).

    Returns:
        int8 array of the same shape: -1 none, 0 palm, 1 left finger, 2 right finger
        (:data:`~geo4d_policy.perception.gripper_model.PART_HAND` etc.), as
        :func:`~geo4d_policy.perception.pose_tracker.part_label_image` gives from packed masks.
    """
    if arm not in ARM_NAMES:
        raise KeyError(f"unknown arm {arm!r}; arms: {ARM_NAMES}")
    classes = _check_classes(classes)
    out = np.full(classes.shape, -1, dtype=np.int8)
    # GRIPPER_PARTS is (hand, left_finger, right_finger): the same order as the PART_* codes.
    for code, part in enumerate(GRIPPER_PARTS):
        out[classes == class_id(arm, part)] = code
    return out


def gripper_mask_for_arm(classes: np.ndarray, arm: str) -> np.ndarray:
    """Bool mask of any part of ``arm``'s gripper from class ids (any shape)."""
    if arm not in ARM_NAMES:
        raise KeyError(f"unknown arm {arm!r}; arms: {ARM_NAMES}")
    classes = _check_classes(classes)
    return np.isin(classes, [class_id(arm, p) for p in GRIPPER_PARTS])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def confusion_matrix(pred: np.ndarray, target: np.ndarray, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 pixel counts, rows = target class, columns = predicted class."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.size} vs {target.size}")
    ok = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    return np.bincount(target[ok] * num_classes + pred[ok], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU ``tp / (tp + fp + fn)``; NaN for a class absent from both."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SegmenterConfig:
    """Size of the U-Net.

    Attributes:
        channels: feature channels per resolution level (finest first); the number of levels
            is its length, so inputs are padded to multiples of ``2 ** (len - 1)``.
        norm_groups: GroupNorm groups (must divide every entry of ``channels``).
        num_classes: output classes (:data:`NUM_CLASSES` for the gripper layout).
        coord_channels: append normalised pixel coordinates to the input (CoordConv): which
            arm a gripper belongs to correlates with where it is in the image (the left arm
            mostly appears on the right half from the +x side), which plain padded
            convolutions only learn indirectly.
    """

    channels: tuple[int, ...] = (8, 16, 32, 64, 96)
    norm_groups: int = 4
    num_classes: int = NUM_CLASSES
    coord_channels: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(f"SegmenterConfig.channels must be positive, got {self.channels}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ConfigError(f"SegmenterConfig: channels {bad} not divisible by "
                              f"norm_groups={self.norm_groups}")
        if self.num_classes < 2:
            raise ConfigError(f"SegmenterConfig.num_classes must be >= 2, got {self.num_classes}")

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this."""
        return 2 ** (len(self.channels) - 1)


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.SiLU(),
        )


class GripperSegmenter(PretrainedModel):
    """Small U-Net: RGB -> per-pixel gripper part classes.

    Args:
        config: the size (default :class:`SegmenterConfig`).

    Example:
        >>> seg = GripperSegmenter.from_pretrained("assets/checkpoints/segmenter_medium")
        >>> classes = seg.predict(rgb)                    # (N, H, W) int8
        >>> labels = part_labels_for_arm(classes, "right")  # tracker part codes
    """

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        super().__init__()
        self.config = config or SegmenterConfig()
        ch, g = self.config.channels, self.config.norm_groups
        c_in = 5 if self.config.coord_channels else 3
        self.down = nn.ModuleList([_ConvBlock(c_in if i == 0 else ch[i - 1], c, g) for i, c in enumerate(ch)])
        self.up = nn.ModuleList([_ConvBlock(ch[i + 1] + ch[i], ch[i], g) for i in range(len(ch) - 1)])
        self.head = nn.Conv2d(ch[0], self.config.num_classes, 1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) of images (N, 3, H, W) scaled to [-1, 1] (any H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.config.coord_channels:
            v = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
            u = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
            grid = torch.stack(torch.meshgrid(v, u, indexing="ij"))
            x = torch.cat([x, grid.expand(x.shape[0], -1, -1, -1)], dim=1)
        m = self.config.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)[..., :h, :w]

    @staticmethod
    def images_to_tensor(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1] (the model's input scaling)."""
        t = torch.as_tensor(rgb)
        return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Class ids of uint8 images.

        Args:
            rgb: (N, H, W, 3) uint8 images.
            batch_size: images per forward pass.

        Returns:
            (N, H, W) int8 class ids (:data:`CLASS_NAMES`).

        Raises:
            ValueError: not an (N, H, W, 3) uint8 array.
        """
        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"predict expects (N, H, W, 3) uint8 images, got {rgb.shape} {rgb.dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        out = np.empty(rgb.shape[:3], dtype=np.int8)
        try:
            for s in range(0, len(rgb), batch_size):
                x = self.images_to_tensor(rgb[s:s + batch_size]).to(self.device)
                out[s:s + batch_size] = self(x).argmax(1).to(torch.int8).cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # ---- checkpoints (format and refusals: geo4d_policy.models.pretrained) ----------------------

    checkpoint_format = SEGMENTER_FORMAT
    format_version = SEGMENTER_VERSION
    family = "gripper segmenter"
    config_type = SegmenterConfig
    required_fields = {"classes": list(CLASS_NAMES)}
