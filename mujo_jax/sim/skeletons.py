"""Joint orders of the pose sources, named from one shared joint vocabulary.

Sensor locations (`mujo_jax.sim.virtual_imu`) are defined by joint names, so that
one definition serves every skeleton. Each skeleton therefore names its joints
from a common vocabulary (pelvis, spine, thorax, neck, head, and
left_/right_ shoulder, elbow, wrist, hand, hip, knee, ankle, foot), and maps the
vocabulary names it lacks onto its nearest joint through `aliases`: Kinect's
hip_center stands in for pelvis, its shoulder_center for thorax and neck. A
name a skeleton neither has nor aliases is unavailable there; callers test with
`has` and fall back (the foot sensor sits at the ankle end of the shin when a
skeleton has no foot joint).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A joint order: positions arrays of this skeleton are `[T, len(joint_names), 3]`.

  `parents[j]` is the index of joint j's parent in the kinematic tree (-1 for
  the root); it gives the bones, whose lengths are constant for rigid motion.
  `aliases` holds (vocabulary name, own joint name) pairs.
  """
  name: str
  joint_names: tuple[str, ...]
  parents: tuple[int, ...]
  aliases: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if len(set(self.joint_names)) != len(self.joint_names):
      raise ValueError(f"skeleton {self.name!r} has duplicate joint names")
    if len(self.parents) != len(self.joint_names):
      raise ValueError(f"skeleton {self.name!r}: {len(self.parents)} parents for "
                       f"{len(self.joint_names)} joints")
    for alias, target in self.aliases:
      if target not in self.joint_names:
        raise ValueError(f"skeleton {self.name!r}: alias {alias!r} -> unknown joint {target!r}")
      if alias in self.joint_names:
        raise ValueError(f"skeleton {self.name!r}: alias {alias!r} shadows a joint")

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def bones(self) -> tuple[tuple[int, int], ...]:
    """(parent, child) index pairs."""
    return tuple((p, j) for j, p in enumerate(self.parents) if p >= 0)

  def resolve(self, joint: str) -> str:
    """The skeleton's own name for a vocabulary joint name (itself, or via an alias)."""
    if joint in self.joint_names:
      return joint
    for alias, target in self.aliases:
      if alias == joint:
        return target
    known = ", ".join(self.joint_names + tuple(a for a, _ in self.aliases))
    raise ValueError(f"skeleton {self.name!r} has no joint {joint!r}; known: {known}")

  def has(self, joint: str) -> bool:
    return joint in self.joint_names or any(alias == joint for alias, _ in self.aliases)

  def index(self, joint: str) -> int:
    return self.joint_names.index(self.resolve(joint))


# Human3.6M 17-joint order as VideoPose3D produces it. "neck" is the joint
# VideoPose3D calls neck/nose: it sits in front of the neck, near the nose.
H36M17 = Skeleton(
    name="h36m17",
    joint_names=("pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
                 "left_ankle", "spine", "thorax", "neck", "head", "left_shoulder",
                 "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist"),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
)

# Kinect v1 20-joint order as in UTD-MHAD (0-based).
KINECT_V1_20 = Skeleton(
    name="kinect_v1_20",
    joint_names=("head", "shoulder_center", "spine", "hip_center", "left_shoulder",
                 "left_elbow", "left_wrist", "left_hand", "right_shoulder", "right_elbow",
                 "right_wrist", "right_hand", "left_hip", "left_knee", "left_ankle",
                 "left_foot", "right_hip", "right_knee", "right_ankle", "right_foot"),
    parents=(1, 2, 3, -1, 1, 4, 5, 6, 1, 8, 9, 10, 3, 12, 13, 14, 3, 16, 17, 18),
    aliases=(("pelvis", "hip_center"), ("thorax", "shoulder_center"),
             ("neck", "shoulder_center")),
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (H36M17, KINECT_V1_20)}


def get_skeleton(name: str) -> Skeleton:
  try:
    return SKELETONS[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown skeleton {name!r}; known: {', '.join(SKELETONS)}") from None
