"""Cross-view mIoU on a hand-built scene: two cameras with known poses looking at a box."""

import numpy as np

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.interface import look_at
from geo4d_policy.perception.metrics import (
    bbox_iou,
    cross_view_iou,
    cross_view_miou,
    mask_bbox,
    pose_error_summary,
    pose_errors,
)

H, W = 120, 160
K = np.array([[150.0, 0, (W - 1) / 2], [0, 150.0, (H - 1) / 2], [0, 0, 1]])
BOX_LO, BOX_HI = np.array([-0.06, -0.04, 0.0]), np.array([0.06, 0.04, 0.07])


def _camera(position):
    """X_TC looking at the origin (+z forward, +y down, world z up)."""
    return look_at(np.asarray(position, dtype=float), np.zeros(3))


def _render_box(X_TC):
    """Ray-cast the box: (mask, pointmap in the camera frame)."""
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    d_C = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    d_T = d_C @ X_TC[:3, :3].T
    o = X_TC[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (BOX_LO - o) / d_T
        t2 = (BOX_HI - o) / d_T
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit = (t_near <= t_far) & (t_near > 0)
    return hit, np.where(hit[..., None], t_near[..., None] * d_C, 0.0)


# Both cameras see the same three faces, so the bounding boxes agree up to pixel rounding.
X_TCn = _camera([0.6, 0.35, 0.5])
X_TCm = _camera([0.35, 0.6, 0.6])
X_CmCn = invert_transform(X_TCm) @ X_TCn


def test_consistent_pointmaps_give_iou_one_and_a_shift_lowers_it():
    mask_n, pm_n = _render_box(X_TCn)
    mask_m, _ = _render_box(X_TCm)
    assert mask_n.sum() > 100 and mask_m.sum() > 100
    iou = cross_view_iou(mask_n, pm_n, mask_m, K_m=K, X_CmCn=X_CmCn, valid_n=mask_n)
    assert iou > 0.95  # pixel rounding only
    # The same camera: exactly 1.
    assert cross_view_iou(mask_n, pm_n, mask_n, K_m=K, X_CmCn=np.eye(4)) == 1.0
    # A pointmap 5 cm off (what an inconsistent generator produces).
    shifted = pm_n + np.array([0.05, 0.0, 0.0])
    iou_shift = cross_view_iou(mask_n, shifted, mask_m, K_m=K, X_CmCn=X_CmCn)
    assert iou_shift < 0.8 and iou_shift < iou


def test_miou_over_time_counts_empty_frames_as_zero():
    mask_n, pm_n = _render_box(X_TCn)
    mask_m, _ = _render_box(X_TCm)
    empty = np.zeros_like(mask_n)
    masks_n = np.stack([mask_n, mask_n, empty])
    masks_m = np.stack([mask_m, empty, mask_m])
    pms = np.stack([pm_n] * 3)
    miou, per = cross_view_miou(masks_n, pms, masks_m, K_m=K, X_CmCn=X_CmCn)
    assert per[0] > 0.95 and per[1] == 0.0 and per[2] == 0.0
    assert np.isclose(miou, per[0] / 3)
    miou_skip, per_skip = cross_view_miou(masks_n, pms, masks_m, K_m=K, X_CmCn=X_CmCn, empty="skip")
    assert np.isnan(per_skip[1]) and np.isclose(miou_skip, per[0])
    # Points behind camera m project nowhere: empty box, IoU 0.
    behind = np.where(mask_n[..., None], [0.0, 0.0, -1.0], 0.0)
    assert cross_view_iou(mask_n, behind, mask_m, K_m=K, X_CmCn=np.eye(4)) == 0.0


def test_boxes_and_pose_errors():
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    assert mask_bbox(m) == (2, 1, 4, 2) and mask_bbox(np.zeros((3, 3), bool)) is None
    assert bbox_iou((0, 0, 1, 1), (1, 1, 2, 2)) == 1 / 7
    assert bbox_iou(None, (0, 0, 1, 1)) == 0.0
    X = np.eye(4)
    Y = np.eye(4)
    Y[:3, 3] = [0.003, 0.004, 0.0]
    Y[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    t, r = pose_errors(Y, X)
    assert np.allclose(t, 5.0) and np.allclose(r, 90.0)
    s = pose_error_summary(np.stack([X, Y]), np.stack([X, X]))
    assert np.isclose(s["trans_mm_median"], 2.5) and np.isclose(s["rot_deg_p90"], 81.0)
