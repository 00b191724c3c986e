"""Former home of the tracker types and the ICP tracker, kept so that old imports keep working.

The code now lives along its seam:
  * :mod:`geo4d_policy.perception.pose_tracker`: :class:`TrackResult`, :class:`TrackingFrame`,
    the :class:`PoseTracker` protocol, :func:`part_label_image`, :func:`pose_delta`,
    :func:`track_gripper_sequence`;
  * :mod:`geo4d_policy.perception.icp_tracker`: :class:`ICPGripperTracker` (decisions) and the
    lock-step drivers :func:`register_all` / :func:`track_all`;
  * :mod:`geo4d_policy.perception.icp_core`: :class:`ICPTrackerConfig` and the reference numpy
    numerics; :mod:`geo4d_policy.perception.icp_torch`: the batched torch numerics;
  * :mod:`geo4d_policy.perception.projection`: occlusion / free space
    (:func:`finger_see_through`).

New code imports from those modules.
"""

from geo4d_policy.perception.icp_core import ICPTrackerConfig
from geo4d_policy.perception.icp_tracker import ICPGripperTracker, register_all, track_all
from geo4d_policy.perception.pose_tracker import (
    Observation,
    PoseTracker,
    Status,
    TrackingFrame,
    TrackResult,
    part_label_image,
    pose_delta,
    track_gripper_sequence,
)
from geo4d_policy.perception.projection import finger_see_through

__all__ = [
    "ICPGripperTracker", "ICPTrackerConfig", "Observation", "PoseTracker", "Status", "TrackResult", "TrackingFrame",
    "finger_see_through", "part_label_image", "pose_delta", "register_all", "track_all", "track_gripper_sequence",
]
