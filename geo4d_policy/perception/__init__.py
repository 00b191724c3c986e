"""Perception on (predicted) RGB-D / pointmap videos: gripper pose tracking, open/close state,
two-view fusion and the cross-view consistency metric (DESIGN.md, "Perception").

Modules:
  * :mod:`.gripper_model` - the gripper CAD model in the gripper frame ``G`` (``panda_link8``).
  * :mod:`.pose_tracker` - :class:`PoseTracker` protocol, the tracker result/frame types,
    :func:`track_gripper_sequence`.
  * :mod:`.icp_tracker` - :class:`ICPGripperTracker` (default), its numerics in :mod:`.icp_core`
    (numpy reference) and :mod:`.icp_torch` (batched, GPU); :mod:`.projection` - occlusion and
    free space in a frame's pixels. (:mod:`.tracker` re-exports the old names.)
  * :mod:`.gripper_state` - finger-cluster centroid distance and open/closed with hysteresis.
  * :mod:`.fusion` - keep the more confident view per frame, map ``X_CnG`` to ``X_TG``.
  * :mod:`.view_pose` - camera m's pose in camera n from pixel-aligned pointmaps (uncalibrated).
  * :mod:`.metrics` - the paper's cross-view mIoU, pose errors.
  * :mod:`.synthetic` - synthetic gripper observations for tests and benchmarks.
  * :mod:`.foundationpose`, :mod:`.sam2_adapter` - optional adapters for user-installed
    FoundationPose / SAM2 (imported only on use).

Nothing here imports pydrake.
"""

from geo4d_policy.perception.fusion import FusedPose, fuse_arms, fuse_views
from geo4d_policy.perception.gripper_model import PART_HAND, PART_LEFT, PART_RIGHT, PARTS, GripperModel
from geo4d_policy.perception.gripper_state import (
    FingerMeasurement,
    GripperStateEstimate,
    GripperStateEstimator,
    measure_finger_opening,
)
from geo4d_policy.perception.metrics import cross_view_iou, cross_view_miou, pose_error_summary, pose_errors
from geo4d_policy.perception.icp_core import ICPTrackerConfig
from geo4d_policy.perception.icp_tracker import ICPGripperTracker
from geo4d_policy.perception.pose_tracker import PoseTracker, TrackingFrame, TrackResult, track_gripper_sequence
from geo4d_policy.perception.view_pose import ViewPoseEstimate, estimate_relative_pose, estimate_view_pose

__all__ = [
    "PARTS", "PART_HAND", "PART_LEFT", "PART_RIGHT", "GripperModel",
    "PoseTracker", "TrackResult", "TrackingFrame", "ICPGripperTracker", "ICPTrackerConfig", "track_gripper_sequence",
    "FingerMeasurement", "GripperStateEstimate", "GripperStateEstimator", "measure_finger_opening",
    "FusedPose", "fuse_views", "fuse_arms", "estimate_relative_pose", "estimate_view_pose", "ViewPoseEstimate",
    "cross_view_iou", "cross_view_miou", "pose_errors", "pose_error_summary",
]
