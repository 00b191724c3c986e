"""The one station factory: table, two Panda arms with Franka Hands, task objects, controllers.

``build_station`` assembles a Drake diagram (MultibodyPlant + SceneGraph with a headless VTK
renderer, one :class:`~sim.controller.ArmController` per arm, optional Meshcat) and returns a
:class:`Station` that the environment drives: set per-arm commands, advance time, read robot
state, object poses and contacts, and render any camera pose on demand through SceneGraph's
query object (cameras are data, not diagram systems, so every episode can sample new ones).

The world frame is the task frame T (table-top centre, z up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydrake.geometry import (
    ClippingRange,
    CollisionFilterDeclaration,
    ColorRenderCamera,
    DepthRange,
    DepthRenderCamera,
    GeometrySet,
    MakeRenderEngineVtk,
    RenderCameraCore,
    RenderEngineVtkParams,
    Role,
    SceneGraph,
)
from pydrake.math import RigidTransform, RollPitchYaw, RotationMatrix
from pydrake.multibody.parsing import Parser
from pydrake.multibody.plant import (
    AddMultibodyPlant,
    MultibodyPlant,
    MultibodyPlantConfig,
)
from pydrake.multibody.tree import BodyIndex, JointActuatorIndex, PdControllerGains
from pydrake.systems.analysis import Simulator
from pydrake.systems.framework import DiagramBuilder
from pydrake.systems.sensors import CameraInfo

from geo4d_policy.interface import ARM_NAMES, GRIPPER_OPEN_WIDTH, ArmState, CameraFrame, CameraSpec
from sim.assets_gen.robot import HAND_YAW
from sim.controller import ArmController, ControllerLimits

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ROBOT_DIR = ASSETS / "robot"
OBJECT_DIR = ASSETS / "objects"
RENDERER = "vtk"


@dataclasses.dataclass(frozen=True)
class ArmMount:
    """Where an arm's ``panda_link0`` sits in T (position, yaw about z) and its home posture."""

    xyz: tuple[float, float, float]
    yaw: float
    q_home: tuple[float, ...] = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)


@dataclasses.dataclass(frozen=True)
class StationConfig:
    """Physics and robot settings of the station (``configs/station.yaml``)."""

    time_step: float = 0.005
    contact_model: str = "hydroelastic_with_fallback"
    discrete_contact_approximation: str = "sap"
    control_dt: float = 0.01
    arm_kp: tuple[float, ...] = (2000.0, 2000.0, 2000.0, 2000.0, 600.0, 600.0, 300.0)
    arm_kd: tuple[float, ...] = (120.0, 120.0, 120.0, 120.0, 30.0, 30.0, 15.0)
    finger_kp: float = 2000.0
    finger_kd: float = 40.0
    left: ArmMount = ArmMount(xyz=(-0.42, 0.30, 0.0), yaw=0.0)
    right: ArmMount = ArmMount(xyz=(-0.42, -0.30, 0.0), yaw=0.0)
    table_size: tuple[float, float, float] = (1.35, 1.7, 0.05)
    table_centre_x: float = -0.07
    # A collision-only floor (not rendered) this far below the table top: an object knocked off
    # the table used to fall forever, and after ~20 s of free fall its spin diverged (NaN poses).
    floor_z: float = -0.75
    settle_time: float = 0.6
    limits: ControllerLimits = ControllerLimits()

    def mount(self, arm: str) -> ArmMount:
        return {"left": self.left, "right": self.right}[arm]


@dataclasses.dataclass(frozen=True)
class ObjectPlacement:
    """One task object: model instance name, SDF file under ``assets/objects``, pose, fixed or free."""

    name: str
    model: str
    X_TO: np.ndarray
    fixed: bool = False


def _table_sdf(size: tuple[float, float, float], centre_x: float) -> str:
    sx, sy, sz = size
    return f"""<?xml version="1.0"?>
<sdf version="1.9" xmlns:drake="http://drake.mit.edu"><model name="table"><static>true</static>
<link name="table"><pose>{centre_x} 0 {-sz / 2} 0 0 0</pose>
<visual name="top"><geometry><box><size>{sx} {sy} {sz}</size></box></geometry>
<material><diffuse>0.62 0.5 0.38 1</diffuse></material></visual>
<collision name="top"><geometry><box><size>{sx} {sy} {sz}</size></box></geometry>
<drake:proximity_properties><drake:rigid_hydroelastic/><drake:mu_dynamic>0.6</drake:mu_dynamic><drake:mu_static>0.6</drake:mu_static></drake:proximity_properties>
</collision></link></model></sdf>"""


def _floor_sdf(z: float) -> str:
    """A static 20 m x 20 m slab whose top is at height ``z`` in T; collision only."""
    return f"""<?xml version="1.0"?>
<sdf version="1.9" xmlns:drake="http://drake.mit.edu"><model name="floor"><static>true</static>
<link name="floor"><pose>0 0 {z - 0.05} 0 0 0</pose>
<collision name="floor"><geometry><box><size>20 20 0.1</size></box></geometry>
<drake:proximity_properties><drake:rigid_hydroelastic/><drake:mu_dynamic>0.6</drake:mu_dynamic><drake:mu_static>0.6</drake:mu_static></drake:proximity_properties>
</collision></link></model></sdf>"""


@dataclasses.dataclass(frozen=True)
class StationSnapshot:
    """A copy of a station's simulator state (see :meth:`Station.snapshot`)."""

    time: float
    discrete: tuple[np.ndarray, ...]
    abstract: tuple[Any, ...]


class Station:
    """A built station with its simulator. Create with :func:`build_station`."""

    def __init__(self, *, config: StationConfig, builder_parts: dict) -> None:
        self.config = config
        self.diagram = builder_parts["diagram"]
        self.plant: MultibodyPlant = builder_parts["plant"]
        self.scene_graph: SceneGraph = builder_parts["scene_graph"]
        self.controllers: dict[str, ArmController] = builder_parts["controllers"]
        self.arm_instances = builder_parts["arm_instances"]
        self.hand_instances = builder_parts["hand_instances"]
        self.object_instances = builder_parts["object_instances"]
        self.placements: dict[str, ObjectPlacement] = builder_parts["placements"]
        self.meshcat_visualizer = builder_parts.get("meshcat_visualizer")
        self.simulator = Simulator(self.diagram)
        self.context = self.simulator.get_mutable_context()
        self.plant_context = self.plant.GetMyMutableContextFromRoot(self.context)
        self.sg_context = self.scene_graph.GetMyContextFromRoot(self.context)
        self._cmd_ports = {
            arm: (self.diagram.GetInputPort(f"{arm}.X_TG_cmd"), self.diagram.GetInputPort(f"{arm}.width_cmd"))
            for arm in ARM_NAMES
        }
        self.label_map = self._make_label_map()
        self._body_by_name = {name: self.plant.get_body(BodyIndex(idx)) for name, idx in self._body_indices().items()}

    # ---- naming -------------------------------------------------------------------------------
    def _instance_prefix(self, instance) -> str:
        for arm in ARM_NAMES:
            if instance in (self.arm_instances[arm], self.hand_instances[arm]):
                return arm
        return self.plant.GetModelInstanceName(instance)

    def _body_indices(self) -> dict[str, int]:
        out = {}
        for i in range(self.plant.num_bodies()):
            body = self.plant.get_body(BodyIndex(i))
            if body.model_instance() == self.plant.world_body().model_instance():
                continue
            out[f"{self._instance_prefix(body.model_instance())}/{body.name()}"] = int(body.index())
        return out

    def _make_label_map(self) -> dict[str, int]:
        # MultibodyPlant gives each perception geometry RenderLabel(body index).
        return self._body_indices()

    def body(self, name: str):
        """Body by ``"<instance>/<body>"`` name, or by model instance name for one-body objects."""
        if name in self._body_by_name:
            return self._body_by_name[name]
        if name in self.object_instances:
            bodies = self.plant.GetBodyIndices(self.object_instances[name])
            return self.plant.get_body(bodies[0])
        raise KeyError(f"no body or object named {name!r}; objects: {sorted(self.object_instances)}")

    # ---- state ---------------------------------------------------------------------------------
    def reset(self, *, arm_q: Mapping[str, np.ndarray] | None = None, width: float = GRIPPER_OPEN_WIDTH) -> None:
        """Put arms at home (or ``arm_q``), fingers open, objects at their placements; time 0."""
        self.context.SetTime(0.0)
        self.diagram.SetDefaultContext(self.context)
        for arm in ARM_NAMES:
            q = np.asarray(arm_q[arm] if arm_q else self.config.mount(arm).q_home, dtype=float)
            self.plant.SetPositions(self.plant_context, self.arm_instances[arm], q)
            self.plant.SetVelocities(self.plant_context, self.arm_instances[arm], np.zeros(7))
            self.plant.SetPositions(self.plant_context, self.hand_instances[arm], [width / 2, width / 2])
            ctrl = self.controllers[arm]
            ctrl_ctx = ctrl.GetMyMutableContextFromRoot(self.context)
            ctrl_ctx.SetDiscreteState(ctrl.initial_state(q, width))
            self.set_command(arm, ctrl.forward_kinematics(q).GetAsMatrix4(), width)
        for name, placement in self.placements.items():
            if not placement.fixed:
                self.plant.SetFreeBodyPose(self.plant_context, self.body(name), RigidTransform(placement.X_TO))
        self.simulator.Initialize()

    def snapshot(self) -> StationSnapshot:
        """The simulator's full state (time, plant and controller state, the plant's step memory).

        :meth:`restore` puts it into this or another station built from the same config and
        objects (e.g. a look-ahead copy of an episode); commands are not part of it.
        """
        ctx = self.context
        ds = ctx.get_discrete_state()
        abstract = ctx.get_abstract_state()
        return StationSnapshot(
            time=ctx.get_time(),
            discrete=tuple(ds.get_vector(i).get_value().copy() for i in range(ds.num_groups())),
            abstract=tuple(abstract.get_value(i).Clone() for i in range(abstract.size())),
        )

    def restore(self, snapshot: StationSnapshot) -> None:
        """Put a :meth:`snapshot` (of this or an identically built station) into the simulator.

        Raises:
            ValueError: the snapshot's state layout differs from this station's.
        """
        ctx = self.context
        ds = ctx.get_discrete_state()
        sizes = tuple(ds.get_vector(i).size() for i in range(ds.num_groups()))
        if sizes != tuple(len(v) for v in snapshot.discrete) or ctx.num_abstract_states() != len(snapshot.abstract):
            raise ValueError(f"snapshot state layout {[len(v) for v in snapshot.discrete]} does not match this "
                             f"station's {list(sizes)}: was it taken from another task or layout?")
        ctx.SetTime(snapshot.time)
        for i, value in enumerate(snapshot.discrete):
            ctx.SetDiscreteState(i, value)
        for i, value in enumerate(snapshot.abstract):
            ctx.get_mutable_abstract_state(i).SetFrom(value)
        self.simulator.Initialize()

    def set_command(self, arm: str, X_TG: np.ndarray, width: float) -> None:
        """Command ``arm``'s gripper frame to ``X_TG`` (4x4 in T) and its fingers to ``width`` (m)."""
        X_port, w_port = self._cmd_ports[arm]
        X_port.FixValue(self.context, RigidTransform(np.asarray(X_TG, dtype=float)))
        w_port.FixValue(self.context, [float(width)])

    def advance(self, dt: float) -> None:
        """Simulate ``dt`` seconds."""
        self.simulator.AdvanceTo(self.context.get_time() + dt)

    @property
    def time(self) -> float:
        return self.context.get_time()

    def max_speed(self) -> float:
        """Largest absolute generalised velocity of the plant (inf when any is not finite)."""
        v = self.plant.GetVelocities(self.plant_context)
        return float(np.max(np.abs(v))) if np.all(np.isfinite(v)) else float("inf")

    def arm_state(self, arm: str) -> ArmState:
        q = self.plant.GetPositions(self.plant_context, self.arm_instances[arm])
        v = self.plant.GetVelocities(self.plant_context, self.arm_instances[arm])
        fingers = self.plant.GetPositions(self.plant_context, self.hand_instances[arm])
        X_TG = self.body(f"{arm}/panda_link8").EvalPoseInWorld(self.plant_context).GetAsMatrix4()
        return ArmState(q=q, v=v, X_TG=X_TG, width=float(fingers.sum()))

    def controller_status(self, arm: str) -> tuple[int, float]:
        """(last differential-IK status code, distance from the commanded to the reachable pose)."""
        ctrl = self.controllers[arm]
        x = ctrl.GetMyContextFromRoot(self.context).get_discrete_state_vector().get_value()
        return int(x[15]), float(x[16])

    def body_pose(self, name: str) -> np.ndarray:
        """``X_TB`` (4x4) of a body (see :meth:`body` for names)."""
        return self.body(name).EvalPoseInWorld(self.plant_context).GetAsMatrix4()

    def object_poses(self) -> dict[str, np.ndarray]:
        return {name: self.body_pose(name) for name in self.object_instances}

    def contact_pairs(self) -> set[frozenset[str]]:
        """Pairs of bodies in contact now, by ``"<instance>/<body>"`` name."""
        results = self.plant.get_contact_results_output_port().Eval(self.plant_context)
        names = {v: k for k, v in self._body_indices().items()}
        pairs: set[frozenset[str]] = set()
        for i in range(results.num_point_pair_contacts()):
            info = results.point_pair_contact_info(i)
            pairs.add(frozenset((names.get(int(info.bodyA_index()), "world"), names.get(int(info.bodyB_index()), "world"))))
        inspector = self.scene_graph.model_inspector()
        for i in range(results.num_hydroelastic_contacts()):
            surface = results.hydroelastic_contact_info(i).contact_surface()
            bodies = []
            for gid in (surface.id_M(), surface.id_N()):
                body = self.plant.GetBodyFromFrameId(inspector.GetFrameId(gid))
                bodies.append(names.get(int(body.index()), "world"))
            pairs.add(frozenset(bodies))
        return pairs

    def bodies_of(self, name: str) -> set[str]:
        """Body names belonging to an object instance (or an arm's gripper, e.g. ``"left"``)."""
        return {b for b in self._body_by_name if b.split("/", 1)[0] == name}

    # ---- rendering -----------------------------------------------------------------------------
    def render(self, spec: CameraSpec, *, near: float = 0.05, far: float = 4.0) -> CameraFrame:
        """Render RGB, depth (metres, 0 = no hit) and labels for camera ``spec`` at the current state."""
        intr = spec.intrinsics
        # Our intrinsics put pixel centres at integer coordinates (pixel (0, 0) is centred at
        # (0, 0), as depth_to_pointmap and every projection here assume); Drake measures the
        # principal point from the image's top-left corner, where pixel (0, 0) is centred at
        # (0.5, 0.5). Without the half-pixel conversion every back-projected point is off by half
        # a pixel (about 5 mm at 1 m), a bias the tracker measured on ground truth.
        info = CameraInfo(intr.width, intr.height, intr.fx, intr.fy, intr.cx + 0.5, intr.cy + 0.5)
        core = RenderCameraCore(RENDERER, info, ClippingRange(near * 0.5, far * 1.25), RigidTransform())
        color_cam = ColorRenderCamera(core, False)
        depth_cam = DepthRenderCamera(core, DepthRange(near, far))
        query = self.scene_graph.get_query_output_port().Eval(self.sg_context)
        world = self.scene_graph.world_frame_id()
        X_TC = RigidTransform(np.asarray(spec.X_TC, dtype=float))
        rgba = query.RenderColorImage(color_cam, world, X_TC)
        depth = query.RenderDepthImage(depth_cam, world, X_TC)
        label = query.RenderLabelImage(color_cam, world, X_TC)
        d = np.array(depth.data[:, :, 0], dtype=np.float32)
        d[~np.isfinite(d)] = 0.0
        return CameraFrame(
            spec=spec,
            rgb=np.array(rgba.data[:, :, :3], dtype=np.uint8),
            depth=d,
            label=np.array(label.data[:, :, 0], dtype=np.int32),
            label_map=self.label_map,
        )


def _load_object(parser: Parser, plant: MultibodyPlant, placement: ObjectPlacement):
    path = OBJECT_DIR / placement.model
    if not path.is_file():
        raise FileNotFoundError(f"object model {path} missing; run scripts/generate_assets.py")
    (instance,) = parser.AddModels(str(path))
    plant.RenameModelInstance(instance, placement.name)
    return instance


def make_control_plant(mount: ArmMount) -> MultibodyPlant:
    """The arm-only plant (base welded at ``mount``) that an :class:`ArmController` solves IK on."""
    plant = MultibodyPlant(0.0)
    (inst,) = Parser(plant).AddModels(str(ROBOT_DIR / "panda_arm.urdf"))
    plant.WeldFrames(plant.world_frame(), plant.GetFrameByName("panda_link0", inst),
                     RigidTransform(RotationMatrix.MakeZRotation(mount.yaw), mount.xyz))
    plant.Finalize()
    return plant


def build_station(*, config: StationConfig, objects: Sequence[ObjectPlacement], meshcat=None) -> Station:
    """Build the station diagram for one episode's object layout.

    Args:
        config: physics/robot settings.
        objects: the task's objects (names must be unique; fixed ones are welded to T).
        meshcat: an optional ``pydrake.geometry.Meshcat`` to visualise (and record) into.
    """
    names = [o.name for o in objects]
    if len(set(names)) != len(names):
        raise ValueError(f"object names must be unique: {names}")
    builder = DiagramBuilder()
    plant, scene_graph = AddMultibodyPlant(
        MultibodyPlantConfig(
            time_step=config.time_step,
            contact_model=config.contact_model,
            discrete_contact_approximation=config.discrete_contact_approximation,
        ),
        builder,
    )
    params = RenderEngineVtkParams()
    params.default_clear_color = [0.82, 0.85, 0.9]
    scene_graph.AddRenderer(RENDERER, MakeRenderEngineVtk(params))
    parser = Parser(plant)
    parser.package_map().Add("geo4d_assets", str(ASSETS))
    parser.AddModelsFromString(_table_sdf(config.table_size, config.table_centre_x), "sdf")
    parser.AddModelsFromString(_floor_sdf(config.floor_z), "sdf")

    arm_instances, hand_instances = {}, {}
    for arm in ARM_NAMES:
        mount = config.mount(arm)
        (arm_inst,) = parser.AddModels(str(ROBOT_DIR / "panda_arm.urdf"))
        plant.RenameModelInstance(arm_inst, arm)
        (hand_inst,) = parser.AddModels(str(ROBOT_DIR / "panda_hand.urdf"))
        plant.RenameModelInstance(hand_inst, f"{arm}_gripper")
        X_TB = RigidTransform(RotationMatrix.MakeZRotation(mount.yaw), mount.xyz)
        plant.WeldFrames(plant.world_frame(), plant.GetFrameByName("panda_link0", arm_inst), X_TB)
        plant.WeldFrames(plant.GetFrameByName("panda_link8", arm_inst), plant.GetFrameByName("panda_hand", hand_inst),
                         RigidTransform(RotationMatrix.MakeZRotation(HAND_YAW)))
        # Position-controlled robot: gravity compensated (as the Panda's own controller does).
        plant.set_gravity_enabled(arm_inst, False)
        plant.set_gravity_enabled(hand_inst, False)
        arm_instances[arm], hand_instances[arm] = arm_inst, hand_inst

    object_instances = {}
    placements = {}
    for placement in objects:
        inst = _load_object(parser, plant, placement)
        object_instances[placement.name] = inst
        placements[placement.name] = placement
        if placement.fixed:
            body = plant.get_body(plant.GetBodyIndices(inst)[0])
            plant.WeldFrames(plant.world_frame(), body.body_frame(), RigidTransform(placement.X_TO))

    # Joint-level PD gains (implicit in SAP, stable at the plant step).
    # (GetJointActuatorIndices is only available after Finalize, so walk all actuators.)
    for i in range(plant.num_actuators()):
        act = plant.get_joint_actuator(JointActuatorIndex(i))
        if act.model_instance() in arm_instances.values():
            j = int(act.name()[-1]) - 1  # panda_motor1..7
            act.set_controller_gains(PdControllerGains(p=config.arm_kp[j], d=config.arm_kd[j]))
        elif act.model_instance() in hand_instances.values():
            act.set_controller_gains(PdControllerGains(p=config.finger_kp, d=config.finger_kd))
    plant.Finalize()

    # No self-collision within one robot (arm + hand): the controller keeps it in its limits.
    cfm = scene_graph.collision_filter_manager()
    for arm in ARM_NAMES:
        ids = []
        for inst in (arm_instances[arm], hand_instances[arm]):
            for bi in plant.GetBodyIndices(inst):
                ids += plant.GetCollisionGeometriesForBody(plant.get_body(bi))
        cfm.Apply(CollisionFilterDeclaration().ExcludeWithin(GeometrySet(ids)))

    controllers = {}
    for arm in ARM_NAMES:
        mount = config.mount(arm)
        ctrl = builder.AddSystem(ArmController(make_control_plant(mount), q_home=np.array(mount.q_home),
                                               dt=config.control_dt, limits=config.limits))
        ctrl.set_name(f"{arm}_controller")
        builder.Connect(ctrl.GetOutputPort("arm_desired_state"), plant.get_desired_state_input_port(arm_instances[arm]))
        builder.Connect(ctrl.GetOutputPort("finger_desired_state"), plant.get_desired_state_input_port(hand_instances[arm]))
        builder.ExportInput(ctrl.GetInputPort("X_TG_cmd"), f"{arm}.X_TG_cmd")
        builder.ExportInput(ctrl.GetInputPort("width_cmd"), f"{arm}.width_cmd")
        controllers[arm] = ctrl

    parts = {}
    if meshcat is not None:
        from pydrake.geometry import MeshcatVisualizer, MeshcatVisualizerParams

        parts["meshcat_visualizer"] = MeshcatVisualizer.AddToBuilder(
            builder, scene_graph, meshcat, MeshcatVisualizerParams(role=Role.kIllustration))
    diagram = builder.Build()
    parts.update(diagram=diagram, plant=plant, scene_graph=scene_graph, controllers=controllers,
                 arm_instances=arm_instances, hand_instances=hand_instances,
                 object_instances=object_instances, placements=placements)
    return Station(config=config, builder_parts=parts)


def pose(xyz=(0.0, 0.0, 0.0), rpy=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 transform from a position and roll-pitch-yaw (radians)."""
    return RigidTransform(RollPitchYaw(*rpy), np.asarray(xyz, dtype=float)).GetAsMatrix4()


def gripper_down(xyz, yaw: float = 0.0) -> np.ndarray:
    """``X_TG`` of a top-down gripper at ``xyz``: link8 z axis pointing down, fingers closing
    along the direction ``yaw`` (radians about T's z; 0 = fingers close along T's y axis)."""
    # Hand frame: fingers close along hand y; link8 = hand rotated by -HAND_YAW about z.
    R_TH = RotationMatrix.MakeZRotation(yaw) @ RotationMatrix.MakeXRotation(np.pi)
    R_TG = R_TH @ RotationMatrix.MakeZRotation(-HAND_YAW)
    return RigidTransform(R_TG, np.asarray(xyz, dtype=float)).GetAsMatrix4()


__all__ = ["ArmMount", "ObjectPlacement", "Station", "StationConfig", "build_station", "gripper_down", "pose"]
