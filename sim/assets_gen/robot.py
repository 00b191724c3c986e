"""The Franka Panda arm and Franka Hand models, authored here from Franka's published data.

Kinematics (joint origins, axes), joint position/velocity/effort limits and the gripper stroke
are Franka's published values (Franka Control Interface documentation, "Robot and interface
specifications"; the modified-DH table a/d/alpha). The geometry is ours: low-poly primitives for
the arm links (render cost is dominated by triangle count, see notes/drake.md) and a simple
gripper CAD model (palm + two fingers, with an asymmetric cable bump on the palm's +x face so
the hand's pose has no 180-degree ambiguity) that the pose tracker reuses as its model.

Outputs (``write_robot_assets``):
  * ``panda_arm.urdf``     links 0..8, 7 revolute joints; ``panda_link8`` is the flange/gripper
                           frame G of the action space.
  * ``panda_hand.urdf``    ``panda_hand`` + two prismatic fingers, welded to link8 by the station.
  * ``meshes/*.obj``       hand and finger meshes in their body frames (visual + tracking model).
  * ``gripper.json``       the gripper's dimensions for perception (no pydrake needed there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh

from sim.assets_gen.urdf import Contact, box_inertia, cylinder_inertia, fmt

# Franka Panda joint limits (rad, rad/s, Nm), as published by Franka Robotics.
JOINT_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
JOINT_VELOCITY = np.array([2.1750, 2.1750, 2.1750, 2.1750, 2.6100, 2.6100, 2.6100])
JOINT_EFFORT = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])

# Joint origins in the parent link frame (xyz, rpy), from Franka's modified-DH parameters:
# a = [0, 0, 0, 0.0825, -0.0825, 0, 0.088], d = [0.333, 0, 0.316, 0, 0.384, 0, 0],
# alpha = [0, -pi/2, pi/2, pi/2, -pi/2, pi/2, pi/2]; flange d = 0.107.
H = np.pi / 2
JOINT_ORIGINS = [
    ((0, 0, 0.333), (0, 0, 0)),
    ((0, 0, 0), (-H, 0, 0)),
    ((0, -0.316, 0), (H, 0, 0)),
    ((0.0825, 0, 0), (H, 0, 0)),
    ((-0.0825, 0.384, 0), (-H, 0, 0)),
    ((0, 0, 0), (H, 0, 0)),
    ((0.088, 0, 0), (H, 0, 0)),
]
FLANGE_OFFSET = 0.107

# Approximate link masses (kg); the controller disables gravity on the robot and tracks with
# stiff joint PD, so these only shape the contact dynamics, not the tracking accuracy.
LINK_MASS = [2.9, 2.7, 2.7, 2.4, 2.4, 2.5, 1.5, 0.6, 0.05]

# Franka Hand: link8 -> hand is a -45 deg rotation about z; finger joints 58.4 mm above the
# hand origin, each finger travels 0..40 mm (80 mm stroke); TCP 103.4 mm above the hand.
HAND_YAW = -np.pi / 4
FINGER_JOINT_Z = 0.0584
FINGER_TRAVEL = 0.04
TCP_Z = 0.1034
HAND_MASS = 0.73
FINGER_MASS = 0.05
FINGER_EFFORT = 35.0  # N per finger: 70 N continuous grasp force in all
FINGER_VELOCITY = 0.1  # m/s per finger

# Our gripper geometry, in the hand frame (z along the fingers, y the closing axis).
PALM_SIZE = (0.06, 0.19, 0.052)  # x (depth), y (width), z (height)
PALM_Z0 = 0.0065  # the palm starts above the flange mount disc
MOUNT_RADIUS, MOUNT_HEIGHT = 0.04, PALM_Z0
BUMP_SIZE = (0.018, 0.05, 0.03)  # asymmetric feature on the palm's +x face
FINGER_SIZE = (0.02, 0.012, 0.054)  # x (width), y (thickness along closing), z (length)

# Colours (rgba).
WHITE = (0.92, 0.92, 0.92, 1.0)
GREY = (0.35, 0.35, 0.38, 1.0)
DARK = (0.12, 0.12, 0.14, 1.0)
FINGER_COLOUR = (0.2, 0.2, 0.22, 1.0)

# Link visual/collision primitives in the link frame: (kind, params, xyz, rpy, colour).
# Cylinders are along the local z axis; rpy turns them.
LINK_SHAPES: dict[int, list[tuple]] = {
    0: [("cylinder", (0.075, 0.14), (0, 0, 0.07), (0, 0, 0), WHITE)],
    1: [("cylinder", (0.065, 0.2), (0, 0, -0.1), (0, 0, 0), WHITE), ("sphere", (0.066,), (0, 0, 0), (0, 0, 0), GREY)],
    2: [("cylinder", (0.065, 0.2), (0, -0.1, 0), (H, 0, 0), WHITE), ("sphere", (0.066,), (0, 0, 0), (0, 0, 0), GREY)],
    3: [("cylinder", (0.06, 0.19), (0, 0, -0.1), (0, 0, 0), WHITE), ("sphere", (0.062,), (0.0825, 0, 0), (0, 0, 0), GREY)],
    4: [("cylinder", (0.06, 0.16), (-0.0825, 0.3, 0), (H, 0, 0), WHITE), ("sphere", (0.062,), (0, 0, 0), (0, 0, 0), GREY),
        ("cylinder", (0.045, 0.15), (-0.04, 0.12, 0), (H, 0, -0.55), WHITE)],
    5: [("cylinder", (0.055, 0.2), (0, 0.03, -0.14), (0, 0, 0), WHITE), ("sphere", (0.058,), (0, 0, 0), (0, 0, 0), GREY)],
    6: [("cylinder", (0.05, 0.11), (0.05, 0, 0), (0, H, 0), WHITE), ("sphere", (0.055,), (0, 0, 0), (0, 0, 0), GREY)],
    7: [("cylinder", (0.045, 0.09), (0, 0, 0.055), (0, 0, 0), DARK)],
}
# Links whose primitives also collide with the world (the forearm and wrist can touch shelves).
COLLIDING_LINKS = (4, 5, 6, 7)


def _geometry_xml(kind: str, params) -> str:
    if kind == "cylinder":
        return f'<cylinder radius="{params[0]:.6g}" length="{params[1]:.6g}"/>'
    if kind == "sphere":
        return f'<sphere radius="{params[0]:.6g}"/>'
    if kind == "box":
        return f'<box size="{fmt(params)}"/>'
    raise ValueError(kind)


def _link_xml(i: int) -> str:
    shapes = LINK_SHAPES.get(i, [])
    mass = LINK_MASS[i]
    if shapes:
        kind, params, xyz, _, _ = shapes[0]
        inertia = cylinder_inertia(mass, params[0], params[1]) if kind == "cylinder" else box_inertia(mass, (0.1,) * 3)
        com = xyz
    else:
        inertia, com = np.eye(3) * 1e-4, (0, 0, 0)
    xml = [f'<link name="panda_link{i}">',
           f'<inertial><origin xyz="{fmt(com)}"/><mass value="{mass}"/>'
           f'<inertia ixx="{inertia[0,0]:.6g}" ixy="0" ixz="0" iyy="{inertia[1,1]:.6g}" iyz="0" izz="{inertia[2,2]:.6g}"/></inertial>']
    for k, (kind, params, xyz, rpy, rgba) in enumerate(shapes):
        xml.append(f'<visual name="v{k}"><origin xyz="{fmt(xyz)}" rpy="{fmt(rpy)}"/><geometry>{_geometry_xml(kind, params)}</geometry>'
                   f'<material name="m{i}_{k}"><color rgba="{fmt(rgba)}"/></material></visual>')
        if i in COLLIDING_LINKS:
            xml.append(f'<collision name="c{k}"><origin xyz="{fmt(xyz)}" rpy="{fmt(rpy)}"/><geometry>{_geometry_xml(kind, params)}</geometry>'
                       f"{Contact(mu=0.5).drake_xml()}</collision>")
    xml.append("</link>")
    return "".join(xml)


def arm_urdf() -> str:
    """URDF of the 7-DoF arm, links 0..8 (link8 = flange = gripper frame G)."""
    parts = ['<?xml version="1.0"?>', '<robot name="panda_arm" xmlns:drake="http://drake.mit.edu">']
    for i in range(9):
        parts.append(_link_xml(i))
    for j, (xyz, rpy) in enumerate(JOINT_ORIGINS):
        parts.append(
            f'<joint name="panda_joint{j + 1}" type="revolute"><parent link="panda_link{j}"/><child link="panda_link{j + 1}"/>'
            f'<origin xyz="{fmt(xyz)}" rpy="{fmt(rpy)}"/><axis xyz="0 0 1"/>'
            f'<limit lower="{JOINT_LOWER[j]}" upper="{JOINT_UPPER[j]}" velocity="{JOINT_VELOCITY[j]}" effort="{JOINT_EFFORT[j]}"/></joint>'
        )
        parts.append(
            f'<transmission name="t{j + 1}"><type>transmission_interface/SimpleTransmission</type>'
            f'<joint name="panda_joint{j + 1}"><hardwareInterface>EffortJointInterface</hardwareInterface></joint>'
            f'<actuator name="panda_motor{j + 1}"/></transmission>'
        )
    parts.append(f'<joint name="panda_joint8" type="fixed"><parent link="panda_link7"/><child link="panda_link8"/>'
                 f'<origin xyz="0 0 {FLANGE_OFFSET}"/></joint>')
    parts.append("</robot>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Gripper: meshes (visual + tracking CAD model) and URDF
# ---------------------------------------------------------------------------------------------


def _box(size, centre) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=size, transform=trimesh.transformations.translation_matrix(centre))


def hand_mesh() -> trimesh.Trimesh:
    """Palm mesh in the hand frame: mount disc, palm block and the +x cable bump."""
    mount = trimesh.creation.cylinder(radius=MOUNT_RADIUS, height=MOUNT_HEIGHT, sections=16)
    mount.apply_translation((0, 0, MOUNT_HEIGHT / 2))
    palm = _box(PALM_SIZE, (0, 0, PALM_Z0 + PALM_SIZE[2] / 2))
    bump = _box(BUMP_SIZE, (PALM_SIZE[0] / 2 + BUMP_SIZE[0] / 2, 0.03, PALM_Z0 + 0.02))
    return trimesh.util.concatenate([mount, palm, bump])


def finger_mesh(side: str) -> trimesh.Trimesh:
    """Finger mesh in its own body frame (origin on the closing axis, at the finger joint).

    The inner (gripping) face lies on the body's y = 0 plane, the finger extends away from
    the other finger (+y for the left finger, -y for the right one), and along +z.
    """
    sx, sy, sz = FINGER_SIZE
    sign = 1.0 if side == "left" else -1.0
    base = _box((sx, sy * 1.6, 0.012), (0, sign * sy * 0.8, 0.006))
    blade = _box((sx, sy, sz), (0, sign * sy / 2, sz / 2))
    return trimesh.util.concatenate([base, blade])


def _gripper_urdf() -> str:
    c_palm = Contact(mu=0.6)
    c_pad = Contact(mu=1.0, hydro="compliant", modulus=5e6, resolution_hint=0.005, dissipation=3.0)
    sx, sy, sz = FINGER_SIZE
    hi = box_inertia(HAND_MASS, PALM_SIZE)
    fi = box_inertia(FINGER_MASS, FINGER_SIZE)
    parts = ['<?xml version="1.0"?>', '<robot name="panda_hand" xmlns:drake="http://drake.mit.edu">',
             '<link name="panda_hand">',
             f'<inertial><origin xyz="0 0 0.03"/><mass value="{HAND_MASS}"/><inertia ixx="{hi[0,0]:.6g}" ixy="0" ixz="0" iyy="{hi[1,1]:.6g}" iyz="0" izz="{hi[2,2]:.6g}"/></inertial>',
             f'<visual name="hand"><geometry><mesh filename="meshes/panda_hand.obj"/></geometry><material name="hand"><color rgba="{fmt(WHITE)}"/></material></visual>',
             f'<collision name="palm"><origin xyz="0 0 {PALM_Z0 + PALM_SIZE[2] / 2}"/><geometry><box size="{fmt(PALM_SIZE)}"/></geometry>{c_palm.drake_xml()}</collision>',
             "</link>"]
    for side, axis in (("left", "0 1 0"), ("right", "0 -1 0")):
        sign = 1.0 if side == "left" else -1.0
        parts += [f'<link name="panda_{side}finger">',
                  f'<inertial><origin xyz="0 {sign * sy / 2:.6g} {sz / 2:.6g}"/><mass value="{FINGER_MASS}"/><inertia ixx="{fi[0,0]:.6g}" ixy="0" ixz="0" iyy="{fi[1,1]:.6g}" iyz="0" izz="{fi[2,2]:.6g}"/></inertial>',
                  f'<visual name="{side}"><geometry><mesh filename="meshes/panda_{side}finger.obj"/></geometry><material name="{side}f"><color rgba="{fmt(FINGER_COLOUR)}"/></material></visual>',
                  # The pad: the distal 30 mm of the finger, compliant so grasps get a contact patch.
                  f'<collision name="{side}_pad"><origin xyz="0 {sign * sy / 2:.6g} {sz - 0.015:.6g}"/><geometry><box size="{sx} {sy} 0.03"/></geometry>{c_pad.drake_xml()}</collision>',
                  f'<collision name="{side}_root"><origin xyz="0 {sign * sy / 2:.6g} {(sz - 0.03) / 2:.6g}"/><geometry><box size="{sx} {sy} {sz - 0.03:.6g}"/></geometry>{c_palm.drake_xml()}</collision>',
                  "</link>",
                  f'<joint name="panda_finger_joint_{side}" type="prismatic"><parent link="panda_hand"/><child link="panda_{side}finger"/>'
                  f'<origin xyz="0 0 {FINGER_JOINT_Z}"/><axis xyz="{axis}"/>'
                  f'<limit lower="0" upper="{FINGER_TRAVEL}" velocity="{FINGER_VELOCITY}" effort="{FINGER_EFFORT}"/></joint>',
                  f'<transmission name="t_{side}"><type>transmission_interface/SimpleTransmission</type>'
                  f'<joint name="panda_finger_joint_{side}"><hardwareInterface>EffortJointInterface</hardwareInterface></joint>'
                  f'<actuator name="panda_finger_motor_{side}"/></transmission>']
    parts.append("</robot>")
    return "\n".join(parts)


def write_obj(mesh: trimesh.Trimesh, path: Path) -> None:
    """Write ``mesh`` as OBJ with per-face (flat) normals, which Drake's parser requires."""
    flat = mesh.copy()
    flat.unmerge_vertices()
    Path(path).write_text(trimesh.exchange.obj.export_obj(flat, include_normals=True, include_texture=False))


def wrist_occluder_mesh() -> trimesh.Trimesh:
    """``panda_link7``'s visual primitives in ``G`` (link8): the arm link welded to the gripper frame.

    Link 7 is rigid in ``G`` (the fixed joint 8), and its cylinder, wider than the hand's mount
    disc, hides the disc and the back of the palm from cameras behind the gripper. Perception
    renders it as an occluder, so that a rendered gripper silhouette matches a label image
    (where those pixels belong to the arm). 24 sections: the simulator draws true cylinders.
    """
    meshes = []
    for kind, params, xyz, rpy, _ in LINK_SHAPES[7]:
        if kind != "cylinder":
            raise ValueError(f"wrist occluder: unsupported primitive {kind}")
        m = trimesh.creation.cylinder(radius=params[0], height=params[1], sections=24)
        m.apply_transform(trimesh.transformations.euler_matrix(*rpy, axes="sxyz"))
        m.apply_translation(np.asarray(xyz, dtype=np.float64) - (0.0, 0.0, FLANGE_OFFSET))
        meshes.append(m)
    return trimesh.util.concatenate(meshes)


def gripper_spec() -> dict:
    """Gripper dimensions for perception: frames, finger travel, TCP, mesh file names."""
    return {
        "frame_G": "panda_link8",
        "X_GH_yaw": HAND_YAW,
        "finger_joint_z": FINGER_JOINT_Z,
        "finger_travel": FINGER_TRAVEL,
        "stroke": 2 * FINGER_TRAVEL,
        "tcp_z": TCP_Z,
        "finger_size": list(FINGER_SIZE),
        "palm_size": list(PALM_SIZE),
        "meshes": {"hand": "meshes/panda_hand.obj", "left_finger": "meshes/panda_leftfinger.obj",
                   "right_finger": "meshes/panda_rightfinger.obj"},
        "occluder": "meshes/panda_link7_in_G.obj",
        "note": "finger bodies sit at z = finger_joint_z in the hand frame, y = +w/2 (left) and -w/2 (right) "
                "for an opening width w; the hand frame is link8 rotated by X_GH_yaw about z. The occluder is "
                "panda_link7's geometry in G (rigid there): it hides parts of the hand, which renderers must respect.",
    }


def write_robot_assets(out_dir: Path) -> list[Path]:
    """Write the arm and gripper models into ``out_dir`` (e.g. ``assets/robot``)."""
    out_dir = Path(out_dir)
    (out_dir / "meshes").mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("panda_arm.urdf", arm_urdf()), ("panda_hand.urdf", _gripper_urdf())):
        (out_dir / name).write_text(text + "\n")
        written.append(out_dir / name)
    for name, mesh in (("panda_hand", hand_mesh()), ("panda_leftfinger", finger_mesh("left")),
                       ("panda_rightfinger", finger_mesh("right")), ("panda_link7_in_G", wrist_occluder_mesh())):
        path = out_dir / "meshes" / f"{name}.obj"
        write_obj(mesh, path)
        written.append(path)
    (out_dir / "gripper.json").write_text(json.dumps(gripper_spec(), indent=2) + "\n")
    written.append(out_dir / "gripper.json")
    return written
