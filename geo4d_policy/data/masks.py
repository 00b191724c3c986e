"""Gripper part masks: the one place that fixes the on-disk bit layout.

Each camera frame stores one uint8 image whose bits flag the gripper parts seen at each pixel:

    bit 0 (1)   left_hand           left/panda_hand
    bit 1 (2)   left_left_finger    left/panda_leftfinger
    bit 2 (4)   left_right_finger   left/panda_rightfinger
    bit 3 (8)   right_hand          right/panda_hand
    bit 4 (16)  right_left_finger   right/panda_leftfinger
    bit 5 (32)  right_right_finger  right/panda_rightfinger

Bits 6 and 7 are unused and must be 0 (``verify`` checks it). Part masks come from label
images by body name (:func:`geo4d_policy.interface.gripper_link_names`), never by label id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from geo4d_policy.interface import ARM_NAMES, CameraFrame, gripper_link_names

GRIPPER_PARTS: tuple[str, ...] = ("hand", "left_finger", "right_finger")
"""Parts of one gripper, in bit order within an arm (keys of ``gripper_link_names``)."""

MASK_BITS: dict[str, int] = {
    f"{arm}_{part}": 3 * a + p for a, arm in enumerate(ARM_NAMES) for p, part in enumerate(GRIPPER_PARTS)
}
"""Part name (``<arm>_<part>``) -> bit index. The layout documented in the module docstring."""

ALL_PARTS_MASK = sum(1 << b for b in MASK_BITS.values())
"""0b111111: every defined bit. A stored value with other bits set is corrupt."""


def part_bits(*, arms: Iterable[str] = ARM_NAMES, parts: Iterable[str] = GRIPPER_PARTS) -> int:
    """Bit mask selecting ``parts`` of ``arms`` (e.g. both fingers of the left arm)."""
    bits = 0
    for arm in arms:
        for part in parts:
            key = f"{arm}_{part}"
            if key not in MASK_BITS:
                raise KeyError(f"unknown gripper part {key!r}; known: {sorted(MASK_BITS)}")
            bits |= 1 << MASK_BITS[key]
    return bits


def pack_masks(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Pack boolean part masks (keys from :data:`MASK_BITS`) into one uint8 image.

    Parts left out are stored as 0. All masks must share one shape.
    """
    if not masks:
        raise ValueError("pack_masks needs at least one part mask")
    shape = np.shape(next(iter(masks.values())))
    out = np.zeros(shape, dtype=np.uint8)
    for key, m in masks.items():
        if key not in MASK_BITS:
            raise KeyError(f"unknown gripper part {key!r}; known: {sorted(MASK_BITS)}")
        m = np.asarray(m, dtype=bool)
        if m.shape != shape:
            raise ValueError(f"mask {key!r} has shape {m.shape}, expected {shape}")
        out |= m.astype(np.uint8) << MASK_BITS[key]
    return out


def unpack_mask(packed: np.ndarray, bits: int) -> np.ndarray:
    """Bool mask of the pixels where any of ``bits`` is set (see :func:`part_bits`)."""
    return (np.asarray(packed) & np.uint8(bits)) != 0


def masks_from_frame(frame: CameraFrame, *, arms: Iterable[str] = ARM_NAMES) -> np.ndarray:
    """Packed part masks of a rendered frame, taken from its label image by body name.

    Raises:
        KeyError: a gripper body is missing from the frame's label map (a station without
            that arm must pass ``arms`` explicitly rather than store silent zeros).
    """
    parts = {}
    for arm in arms:
        names = gripper_link_names(arm)
        for part in GRIPPER_PARTS:
            parts[f"{arm}_{part}"] = frame.mask(names[part])
    return pack_masks(parts)
