"""Task objects authored by the project: fixtures, manipulands and distractors (SDFormat).

Collision geometry is built from primitives (boxes, cylinders) or convex meshes: fixtures are
rigid-hydroelastic, manipulands compliant-hydroelastic (notes/drake.md: a compliant table under
a non-convex rigid mesh is 5-10x slower; rigid-rigid pairs fall back to point contact).
Visuals are low-poly so that 16 cameras render cheaply.

Object frames (what the task predicates read):
  * bowl, bin, crock: origin at the centre of the inside bottom surface, z up.
  * shelf: origin at the centre of the lower level's top surface; ``SHELF_TOP_Z`` above it is
    the top level's surface; the open side faces -x (the robots), the back panel +x.
  * apple, fruit, pepper: origin at the centre of mass (centre of the shape).
  * cereal_box: origin at the centre of the bottom face; local x is the thin side
    (``CEREAL_BOX_SIZE[0]`` = 0.0505 m, "one box width"), z up.
  * spatula: origin at the handle centre, local +x toward the handle end, the blade at -x,
    local z the thin direction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from sim.assets_gen.robot import write_obj
from sim.assets_gen.urdf import Contact, box_inertia, fmt

RIGID = Contact(mu=0.6, hydro="rigid")
COMPLIANT = Contact(mu=0.9, hydro="compliant", modulus=1e6, resolution_hint=0.01, dissipation=3.0)

BOWL_RADIUS, BOWL_HEIGHT, BOWL_BOTTOM_RADIUS = 0.095, 0.07, 0.05
BIN_INNER, BIN_HEIGHT, BIN_WALL = (0.30, 0.22), 0.11, 0.012
CROCK_RADIUS, CROCK_HEIGHT, CROCK_WALL = 0.055, 0.125, 0.01
# A divider insert just below the crock's rim: a plate with a square hole around the crock axis
# that keeps a standing utensil from toppling against the rim if it is knocked (the spatula's
# 22 x 12 mm handle, 25 mm across its diagonal, has >= 3 mm clearance at any yaw). Hole side,
# plate height (top, in the crock frame), thickness.
CROCK_COLLAR_HOLE, CROCK_COLLAR_Z, CROCK_COLLAR_T = 0.031, 0.115, 0.008
# Point contact (no hydroelastic properties): a utensil standing on its small end face in the crock
# stays upright with point contact, while a hydroelastic end-face contact either bounced it out
# (stiff) or let it slowly topple (soft).
CROCK_CONTACT = Contact(mu=0.6)
SHELF_SIZE = (0.26, 0.56)  # depth (x), width (y)
SHELF_TOP_Z = 0.30  # top level surface above the lower level surface
SHELF_PLATE = 0.018
CEREAL_BOX_SIZE = (0.0505, 0.15, 0.20)
APPLE_RADIUS, APPLE_HEIGHT = 0.037, 0.068
FRUIT_RADIUS = 0.034
# A flat wooden spatula (36 cm): it stands handle-end down in the crock with the handle centre
# (its origin) 0.15 m above the crock bottom, so the handle is long enough to reach the bottom.
SPATULA_HANDLE = (0.276, 0.022, 0.012)  # length (x), width (y), thickness (z)
SPATULA_BLADE = (0.09, 0.065, 0.006)  # 6 mm: a thinner compliant box gets a needlessly stiff pressure field
SPATULA_OVERLAP = 0.005  # the blade overlaps the handle's blade-side end
SPATULA_HANDLE_END = SPATULA_HANDLE[0] / 2
SPATULA_HANDLE_MASS, SPATULA_BLADE_MASS = 0.05, 0.02


def _material(rgba) -> str:
    return f"<material><diffuse>{fmt(rgba)}</diffuse></material>"


def _box_geom(size) -> str:
    return f"<box><size>{fmt(size)}</size></box>"


def _cyl_geom(radius, length) -> str:
    return f"<cylinder><radius>{radius:.6g}</radius><length>{length:.6g}</length></cylinder>"


def _mesh_geom(uri: str) -> str:
    return f"<mesh><uri>{uri}</uri></mesh>"


def _convex_geom(uri: str) -> str:
    return f'<mesh><uri>{uri}</uri><drake:declare_convex/></mesh>'


def _inertial(mass: float, inertia: np.ndarray, com=(0, 0, 0)) -> str:
    return (f"<inertial><pose>{fmt(com)} 0 0 0</pose><mass>{mass:.6g}</mass><inertia>"
            f"<ixx>{inertia[0, 0]:.6g}</ixx><ixy>0</ixy><ixz>0</ixz><iyy>{inertia[1, 1]:.6g}</iyy><iyz>0</iyz>"
            f"<izz>{inertia[2, 2]:.6g}</izz></inertia></inertial>")


def _sdf(name: str, link_body: str) -> str:
    return (f'<?xml version="1.0"?>\n<sdf version="1.9" xmlns:drake="http://drake.mit.edu">'
            f'<model name="{name}"><link name="{name}">{link_body}</link></model></sdf>\n')


def _part(kind: str, name: str, geom: str, pose=(0, 0, 0, 0, 0, 0), *, rgba=None, contact: Contact | None = None) -> str:
    if kind == "visual":
        return f'<visual name="{name}"><pose>{fmt(pose)}</pose><geometry>{geom}</geometry>{_material(rgba)}</visual>'
    return f'<collision name="{name}"><pose>{fmt(pose)}</pose><geometry>{geom}</geometry>{contact.sdf_xml()}</collision>'


def _boxes(parts: list[tuple[tuple, tuple]], rgba, contact: Contact, *, prefix: str = "") -> str:
    """Visual + collision boxes from (size, pose6) pairs (``prefix`` keeps names unique)."""
    out = []
    for i, (size, pose6) in enumerate(parts):
        out.append(_part("visual", f"{prefix}v{i}", _box_geom(size), pose6, rgba=rgba))
        out.append(_part("collision", f"{prefix}c{i}", _box_geom(size), pose6, contact=contact))
    return "".join(out)


def _ring(radius_bottom: float, radius_top: float, height: float, wall: float, n: int, z0: float = 0.0):
    """Wall boxes of a (possibly flared) ring: n staves around z, from z0 to z0 + height."""
    parts = []
    slant = np.arctan2(radius_top - radius_bottom, height)
    length = np.hypot(height, radius_top - radius_bottom)
    r_mid = 0.5 * (radius_top + radius_bottom) + wall / 2
    chord = 2 * r_mid * np.tan(np.pi / n) + 0.004
    for k in range(n):
        a = 2 * np.pi * k / n
        # A stave: thin along its local x (radial), chord along y, length along z; tilted outward.
        pose6 = (r_mid * np.cos(a), r_mid * np.sin(a), z0 + height / 2, 0.0, -slant, a)
        parts.append(((wall, chord, length), pose6))
    return parts


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def bowl_sdf() -> str:
    wall = 0.008
    parts = [((2 * BOWL_BOTTOM_RADIUS, 2 * BOWL_BOTTOM_RADIUS, 0.01), (0, 0, -0.005, 0, 0, 0))]
    parts += _ring(BOWL_BOTTOM_RADIUS, BOWL_RADIUS, BOWL_HEIGHT, wall, 14)
    body = _inertial(0.5, box_inertia(0.5, (0.2, 0.2, 0.07)))
    # Visual: a smooth-ish revolved bowl mesh; collision: the staves.
    body += _part("visual", "shell", _mesh_geom("package://geo4d_assets/objects/meshes/bowl.obj"), rgba=(0.85, 0.82, 0.74, 1))
    for i, (size, pose6) in enumerate(parts):
        body += _part("collision", f"c{i}", _box_geom(size), pose6, contact=RIGID)
    return _sdf("bowl", body)


def bowl_mesh() -> trimesh.Trimesh:
    profile = np.array([[0.0, -0.01], [BOWL_BOTTOM_RADIUS, -0.01], [BOWL_RADIUS + 0.006, BOWL_HEIGHT],
                        [BOWL_RADIUS - 0.002, BOWL_HEIGHT], [BOWL_BOTTOM_RADIUS - 0.006, 0.0], [0.0, 0.0]])
    return trimesh.creation.revolve(profile, sections=20)


def bin_sdf() -> str:
    ix, iy = BIN_INNER
    w, h = BIN_WALL, BIN_HEIGHT
    parts = [((ix + 2 * w, iy + 2 * w, w), (0, 0, -w / 2, 0, 0, 0)),
             ((w, iy + 2 * w, h), ((ix + w) / 2, 0, h / 2, 0, 0, 0)),
             ((w, iy + 2 * w, h), (-(ix + w) / 2, 0, h / 2, 0, 0, 0)),
             ((ix, w, h), (0, (iy + w) / 2, h / 2, 0, 0, 0)),
             ((ix, w, h), (0, -(iy + w) / 2, h / 2, 0, 0, 0))]
    body = _inertial(1.0, box_inertia(1.0, (ix, iy, h))) + _boxes(parts, (0.25, 0.35, 0.6, 1), RIGID)
    return _sdf("bin", body)


def crock_sdf() -> str:
    parts = [((2 * CROCK_RADIUS, 2 * CROCK_RADIUS, 0.01), (0, 0, -0.005, 0, 0, 0))]
    parts += _ring(CROCK_RADIUS, CROCK_RADIUS, CROCK_HEIGHT, CROCK_WALL, 12)
    # Divider insert: four bars framing the square hole, reaching the wall (corners stay inside
    # the outer radius).
    half_hole, reach = CROCK_COLLAR_HOLE / 2, 0.045
    bar_w, z = reach - half_hole, CROCK_COLLAR_Z - CROCK_COLLAR_T / 2
    for sgn in (-1, 1):
        offset = sgn * (half_hole + bar_w / 2)
        parts.append(((2 * reach, bar_w, CROCK_COLLAR_T), (0, offset, z, 0, 0, 0)))
        parts.append(((bar_w, CROCK_COLLAR_HOLE, CROCK_COLLAR_T), (offset, 0, z, 0, 0, 0)))
    body = _inertial(0.8, box_inertia(0.8, (0.11, 0.11, 0.12)))
    body += _part("visual", "shell", _cyl_geom(CROCK_RADIUS + CROCK_WALL, CROCK_HEIGHT), (0, 0, CROCK_HEIGHT / 2, 0, 0, 0),
                  rgba=(0.55, 0.33, 0.22, 1))
    for i, (size, pose6) in enumerate(parts):
        body += _part("collision", f"c{i}", _box_geom(size), pose6, contact=CROCK_CONTACT)
    return _sdf("crock", body)


def shelf_sdf() -> str:
    dx, dy = SHELF_SIZE
    t = SHELF_PLATE
    post = 0.02
    parts = [((dx, dy, t), (0, 0, -t / 2, 0, 0, 0)),  # lower level
             ((dx, dy, t), (0, 0, SHELF_TOP_Z - t / 2, 0, 0, 0)),  # top level
             ((0.01, dy, SHELF_TOP_Z), (dx / 2 - 0.005, 0, SHELF_TOP_Z / 2, 0, 0, 0))]  # back panel (+x)
    for sy in (-1, 1):  # side panels
        parts.append(((dx, post, SHELF_TOP_Z), (0, sy * (dy / 2 - post / 2), SHELF_TOP_Z / 2, 0, 0, 0)))
    body = _inertial(5.0, box_inertia(5.0, (dx, dy, SHELF_TOP_Z))) + _boxes(parts, (0.72, 0.6, 0.45, 1), RIGID)
    return _sdf("shelf", body)


def cutting_board_sdf() -> str:
    size = (0.30, 0.18, 0.015)
    body = _inertial(0.4, box_inertia(0.4, size), (0, 0, size[2] / 2))
    body += _boxes([(size, (0, 0, size[2] / 2, 0, 0, 0))], (0.78, 0.6, 0.38, 1), COMPLIANT)
    return _sdf("cutting_board", body)


def drying_rack_sdf() -> str:
    size = (0.22, 0.30, 0.012)
    parts = [(size, (0, 0, 0.006, 0, 0, 0))]
    for k in range(5):  # wire slots
        parts.append(((0.006, 0.30, 0.09), (-0.09 + 0.045 * k, 0, 0.057, 0, 0, 0)))
    plates = [((0.012, 0.2, 0.2), (-0.0675 + 0.045 * k, 0, 0.112, 0, 0, 0)) for k in range(3)]
    body = _inertial(2.0, box_inertia(2.0, (0.22, 0.3, 0.1)))
    body += _boxes(parts, (0.7, 0.7, 0.72, 1), RIGID) + "".join(
        _part("visual", f"plate{i}", _box_geom(s), p, rgba=(0.95, 0.95, 0.92, 1)) for i, (s, p) in enumerate(plates))
    return _sdf("drying_rack", body)


def mug_holder_sdf() -> str:
    parts = [((0.14, 0.14, 0.012), (0, 0, 0.006, 0, 0, 0)), ((0.016, 0.016, 0.26), (0, 0, 0.13, 0, 0, 0))]
    mugs = [(((0.07, 0.07, 0.09)), (0.0, 0.062 * s, 0.12, 0, 0, 0)) for s in (-1, 1)]
    body = _inertial(1.5, box_inertia(1.5, (0.14, 0.14, 0.26)))
    body += _boxes(parts, (0.45, 0.3, 0.2, 1), RIGID) + _boxes(mugs, (0.3, 0.55, 0.75, 1), RIGID, prefix="mug")
    return _sdf("mug_holder", body)


# --------------------------------------------------------------------------------------------
# Manipulands and free distractors
# --------------------------------------------------------------------------------------------


def apple_mesh() -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    v = m.vertices.copy()
    # Flattened poles (an apple stands on its base) and a slight taper toward the bottom.
    v[:, 2] = np.clip(v[:, 2], -0.82, 0.85)
    scale_xy = APPLE_RADIUS * (1.0 - 0.08 * np.clip(-v[:, 2], 0, 1))
    v[:, 0] *= scale_xy
    v[:, 1] *= scale_xy
    v[:, 2] *= APPLE_HEIGHT / 1.67
    return trimesh.convex.convex_hull(v)


def fruit_mesh() -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=2, radius=FRUIT_RADIUS)
    m.vertices[:, 2] *= 0.92
    return trimesh.convex.convex_hull(m.vertices)


def pepper_mesh() -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    v = m.vertices.copy()
    ang = np.arctan2(v[:, 1], v[:, 0])
    r = 0.038 * (1 + 0.08 * np.cos(4 * ang))
    v[:, 0] *= r
    v[:, 1] *= r
    v[:, 2] = np.clip(v[:, 2], -0.8, 0.9) * 0.045
    return trimesh.convex.convex_hull(v)


def _convex_object(name: str, mesh_name: str, mass: float, rgba, radius: float) -> str:
    uri = f"package://geo4d_assets/objects/meshes/{mesh_name}.obj"
    body = _inertial(mass, np.eye(3) * 0.4 * mass * radius**2)
    body += _part("visual", "v", _mesh_geom(uri), rgba=rgba)
    body += _part("collision", "c", _convex_geom(uri), contact=COMPLIANT)
    return _sdf(name, body)


def cereal_box_sdf(name: str = "cereal_box", rgba=(0.85, 0.65, 0.15, 1)) -> str:
    sx, sy, sz = CEREAL_BOX_SIZE
    body = _inertial(0.3, box_inertia(0.3, CEREAL_BOX_SIZE), (0, 0, sz / 2))
    body += _part("visual", "v", _box_geom(CEREAL_BOX_SIZE), (0, 0, sz / 2, 0, 0, 0), rgba=rgba)
    # A printed front panel (+y face) so the box's orientation is visible in images.
    body += _part("visual", "front", _box_geom((sx * 0.8, 0.002, sz * 0.6)), (0, sy / 2 + 0.001, sz * 0.55, 0, 0, 0),
                  rgba=(0.8, 0.15, 0.1, 1))
    body += _part("collision", "c", _box_geom(CEREAL_BOX_SIZE), (0, 0, sz / 2, 0, 0, 0),
                  contact=Contact(mu=0.7, hydro="compliant", modulus=2e6, resolution_hint=0.02, dissipation=3.0))
    return _sdf(name, body)


def spatula_sdf() -> str:
    hx, hy, hz = SPATULA_HANDLE
    bx, by, bz = SPATULA_BLADE
    blade_x = -(hx / 2 + bx / 2) + SPATULA_OVERLAP
    blade_pose = (blade_x, 0, 0, 0, 0, 0)
    mh, mb = SPATULA_HANDLE_MASS, SPATULA_BLADE_MASS
    mass = mh + mb
    com_x = mb * blade_x / mass
    # Inertia of the two boxes about the common centre of mass (parallel-axis terms along x).
    inertia = box_inertia(mh, SPATULA_HANDLE) + box_inertia(mb, SPATULA_BLADE)
    inertia += np.diag([0.0, 1.0, 1.0]) * (mh * com_x**2 + mb * (blade_x - com_x) ** 2)
    body = _inertial(mass, inertia, (com_x, 0, 0))
    # Softer than the other manipulands on purpose: a compliant box's pressure field scales with
    # 1 / its half thickness (6 mm here), so at 5e6 (and still 1e6) Pa a drop onto the 22 x 12 mm
    # handle end against a rigid hydroelastic surface bounced the spatula out (SAP added momentum);
    # at 3e5 Pa it lands cleanly and the fingers still hold it firmly.
    contact = Contact(mu=0.8, hydro="compliant", modulus=3e5, resolution_hint=0.006, dissipation=3.0)
    body += _part("visual", "handle", _box_geom(SPATULA_HANDLE), rgba=(0.62, 0.42, 0.24, 1))
    body += _part("visual", "blade", _box_geom(SPATULA_BLADE), blade_pose, rgba=(0.7, 0.5, 0.3, 1))
    body += _part("collision", "handle", _box_geom(SPATULA_HANDLE), contact=contact)
    body += _part("collision", "blade", _box_geom(SPATULA_BLADE), blade_pose, contact=contact)
    return _sdf("spatula", body)


def spoon_sdf() -> str:
    body = _inertial(0.04, box_inertia(0.04, (0.16, 0.03, 0.01)))
    parts = [((0.11, 0.012, 0.006), (0.03, 0, 0.003, 0, 0, 0)), ((0.05, 0.032, 0.01), (-0.05, 0, 0.005, 0, 0, 0))]
    body += _boxes(parts, (0.75, 0.75, 0.78, 1), COMPLIANT)
    return _sdf("spoon", body)


OBJECT_SDFS = {
    "bowl.sdf": bowl_sdf,
    "bin.sdf": bin_sdf,
    "crock.sdf": crock_sdf,
    "shelf.sdf": shelf_sdf,
    "cutting_board.sdf": cutting_board_sdf,
    "drying_rack.sdf": drying_rack_sdf,
    "mug_holder.sdf": mug_holder_sdf,
    "apple.sdf": lambda: _convex_object("apple", "apple", 0.15, (0.78, 0.1, 0.08, 1), APPLE_RADIUS),
    "fruit.sdf": lambda: _convex_object("fruit", "fruit", 0.13, (0.95, 0.55, 0.1, 1), FRUIT_RADIUS),
    "bell_pepper.sdf": lambda: _convex_object("bell_pepper", "bell_pepper", 0.15, (0.2, 0.6, 0.15, 1), 0.04),
    "cereal_box.sdf": cereal_box_sdf,
    "spatula.sdf": spatula_sdf,
    "spoon.sdf": spoon_sdf,
}
OBJECT_MESHES = {"bowl": bowl_mesh, "apple": apple_mesh, "fruit": fruit_mesh, "bell_pepper": pepper_mesh}


def write_object_assets(out_dir: Path) -> list[Path]:
    """Write every object SDF (and its meshes) into ``out_dir`` (e.g. ``assets/objects``)."""
    out_dir = Path(out_dir)
    (out_dir / "meshes").mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in OBJECT_MESHES.items():
        path = out_dir / "meshes" / f"{name}.obj"
        write_obj(make(), path)
        written.append(path)
    for name, make in OBJECT_SDFS.items():
        path = out_dir / name
        path.write_text(make())
        written.append(path)
    return written
