"""Procedurally animated exercises: the motion source of the embedded demo dataset.

A clip is one exercise repeated for its whole duration. Poses come from
forward kinematics of a 17-joint body (h36m17 order): trunk, head and free
limbs are rotated by joint angles that are smooth periodic functions of a
repetition phase (one cycle per repetition). Limbs that must stay put (feet on
the floor, hands on the floor in pushups, hands behind the head in situps)
have their two bones placed by an analytic two-link solve towards the planted
point instead. Either way every bone keeps its length exactly, so only the
added joint noise changes bone lengths.

Per clip, `rng` draws, in this order: the body (`sample_body`, unless one is
given), tempo (rep period 1.5-3.5 s, x0.45 for jumping jacks, drifting slowly
by up to +-15 %), starting phase, range of motion (0.7-1.1 of the nominal
amplitudes), a few exercise-specific style parameters (stance width, trunk
lean, ...), facing direction (yaw about z), a position offset on the floor
(+-1 m), and the joint noise level (white, 2-5 mm, unless `joint_noise_m`).

World frame: metres, z up, floor at z = 0. The ankle joint is
`BodyParams.ankle_height` above the floor when the foot is flat. Before the
random yaw the body faces +y with its right side towards +x.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.spatial.transform import Rotation

from mujo_jax.sim import skeletons

EXERCISES = ("squats", "pushups", "dumbbell_shoulder_press", "lunges", "dumbbell_rows", "situps",
             "tricep_extensions", "dumbbell_biceps_curls", "lateral_shoulder_raises",
             "jumping_jacks")

# Segment lengths as fractions of standing height, after Human3.6M bone lengths.
_RATIOS = dict(ankle_height=0.045, shin=0.250, thigh=0.255, hip_half_width=0.075,
               lower_spine=0.135, upper_spine=0.150, neck=0.085, head=0.090,
               shoulder_half_width=0.090, upper_arm=0.165, forearm=0.148)
_NECK_TILT = math.radians(20)   # the neck/nose joint sits forward of the thorax
_HEAD_TILT = math.radians(-25)  # the head-top joint sits back from the nose
_DEG = math.pi / 180
_TEMPO = {"jumping_jacks": 0.45}  # rep period multiplier: a jumping jack takes about a second


@dataclasses.dataclass(frozen=True)
class BodyParams:
  """Body proportions in metres: the bone lengths of the h36m17 tree.

  neck: thorax -> neck/nose joint; head: neck/nose -> head top;
  *_half_width: pelvis -> hip and thorax -> shoulder.
  """
  height: float
  ankle_height: float
  shin: float
  thigh: float
  hip_half_width: float
  lower_spine: float
  upper_spine: float
  neck: float
  head: float
  shoulder_half_width: float
  upper_arm: float
  forearm: float

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not (math.isfinite(value) and value > 0):
        raise ValueError(f"BodyParams.{field.name} must be finite and > 0, got {value}")

  @classmethod
  def from_height(cls, height: float) -> BodyParams:
    """Average proportions for a standing height in metres."""
    return cls(height=height, **{k: r * height for k, r in _RATIOS.items()})

  @property
  def leg(self) -> float:
    return self.thigh + self.shin

  @property
  def arm(self) -> float:
    return self.upper_arm + self.forearm


def sample_body(rng: np.random.Generator) -> BodyParams:
  """Height uniform in 1.55-1.95 m; each proportion jittered by N(0, 3 %), clipped at 8 %."""
  height = rng.uniform(1.55, 1.95)
  jitter = np.clip(rng.normal(0.0, 0.03, len(_RATIOS)), -0.08, 0.08)
  return BodyParams(height=height, **{k: r * height * (1 + j)
                                      for (k, r), j in zip(_RATIOS.items(), jitter)})


def synthesize(exercise: str, duration_s: float, rate_hz: float, rng: np.random.Generator,
               body: BodyParams | None = None, joint_noise_m: float | None = None) -> np.ndarray:
  """Joint positions `[T, 17, 3]` (h36m17 order, metres, z up) of one exercise clip.

  T = round(duration_s * rate_hz), frame k at time k / rate_hz. Deterministic
  for a given rng state. joint_noise_m: std of the white noise added to every
  coordinate (None draws 2-5 mm per clip, 0 gives exact kinematics).
  """
  if exercise not in _BUILDERS:
    raise ValueError(f"unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}")
  for arg, value in (("duration_s", duration_s), ("rate_hz", rate_hz)):
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"{arg} must be finite and > 0, got {value}")
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng must be a np.random.Generator, got {type(rng).__name__}")
  if joint_noise_m is not None and not (math.isfinite(joint_noise_m) and joint_noise_m >= 0):
    raise ValueError(f"joint_noise_m must be finite and >= 0, got {joint_noise_m}")
  n = round(duration_s * rate_hz)
  if n < 2:
    raise ValueError(f"duration_s * rate_hz = {duration_s * rate_hz} gives fewer than 2 frames")

  body = sample_body(rng) if body is None else body
  phase = _phase(np.arange(n) / rate_hz, _TEMPO.get(exercise, 1.0), rng)
  clip = _Clip(body=body, phase=phase, rom=rng.uniform(0.7, 1.1), rng=rng)
  joints = _BUILDERS[exercise](clip)
  local = np.stack([joints[name] for name in skeletons.H36M17.joint_names], axis=1)

  yaw = Rotation.from_euler("z", rng.uniform(0, 2 * np.pi)).as_matrix()
  offset = np.append(rng.uniform(-1.0, 1.0, 2), 0.0)
  noise = rng.uniform(0.002, 0.005) if joint_noise_m is None else joint_noise_m
  return local @ yaw.T + offset + rng.normal(0.0, noise, local.shape)


@dataclasses.dataclass(frozen=True)
class _Clip:
  """What an exercise builder animates: phase [T] in radians (one cycle per
  rep), range of motion `rom`, and rng for style parameters."""
  body: BodyParams
  phase: np.ndarray
  rom: float
  rng: np.random.Generator

  @property
  def n(self) -> int:
    return len(self.phase)

  @property
  def progress(self) -> np.ndarray:
    """[T] (1 - cos phase) / 2: 0 at the rest pose, 1 at the turning point of a rep."""
    return (1 - np.cos(self.phase)) / 2

  @property
  def depth(self) -> np.ndarray:
    """[T] rom * progress: how far into the movement, scaled by range of motion."""
    return self.rom * self.progress


def _phase(t: np.ndarray, period_scale: float, rng: np.random.Generator) -> np.ndarray:
  """Repetition phase [T]: 2 pi times the integral of a slowly drifting rep frequency."""
  period = rng.uniform(1.5, 3.5) * period_scale
  drift, drift_period = rng.uniform(0, 0.15), rng.uniform(10, 30)
  drift_offset = rng.uniform(0, 2 * np.pi)
  start = rng.uniform(0, 2 * np.pi)
  w = 2 * np.pi / drift_period
  cycles = (t + drift / w * (np.cos(drift_offset) - np.cos(w * t + drift_offset))) / period
  return start + 2 * np.pi * cycles


def _rot(axis: str, angle, n: int) -> np.ndarray:
  """[n, 3, 3] rotations about one axis; angle scalar or [n]."""
  return Rotation.from_euler(axis, np.broadcast_to(angle, (n,))[:, None]).as_matrix()


def _apply(r: np.ndarray, v) -> np.ndarray:
  """r [T, 3, 3] times v [3] or [T, 3] -> [T, 3]."""
  v = np.asarray(v, dtype=np.float64)
  return r @ v if v.ndim == 1 else (r @ v[..., None])[..., 0]


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _trunk(body: BodyParams, pelvis, r_pelvis, lumbar=0.0, thoracic=0.0, nod=0.0):
  """Pelvis -> head chain plus hips and shoulders; flexion angles bend forward.

  pelvis [T, 3], r_pelvis [T, 3, 3] (columns: body right, forward, up).
  Returns (joints by name, thorax frame [T, 3, 3], head frame [T, 3, 3]).
  """
  n = len(pelvis)
  r_lumbar = r_pelvis @ _rot("x", -np.asarray(lumbar), n)
  r_thorax = r_lumbar @ _rot("x", -np.asarray(thoracic), n)
  r_head = r_thorax @ _rot("x", -np.asarray(nod), n)
  spine = pelvis + _apply(r_lumbar, [0, 0, body.lower_spine])
  thorax = spine + _apply(r_thorax, [0, 0, body.upper_spine])
  neck = thorax + _apply(r_head, body.neck * np.array([0, math.sin(_NECK_TILT),
                                                       math.cos(_NECK_TILT)]))
  head = neck + _apply(r_head, body.head * np.array([0, math.sin(_HEAD_TILT),
                                                     math.cos(_HEAD_TILT)]))
  joints = dict(pelvis=pelvis, spine=spine, thorax=thorax, neck=neck, head=head)
  for side, name in ((1, "right"), (-1, "left")):
    joints[f"{name}_hip"] = pelvis + _apply(r_pelvis, [side * body.hip_half_width, 0, 0])
    joints[f"{name}_shoulder"] = thorax + _apply(r_thorax, [side * body.shoulder_half_width, 0, 0])
  return joints, r_thorax, r_head


def _limb_fk(root, r_parent, side: int, l1: float, l2: float, flex=0.0, abd=0.0, rot=0.0,
             bend=0.0):
  """Two-bone limb by joint angles (radians, scalar or [T]) -> (middle, end) [T, 3].

  At zero angles the limb hangs along the parent's -z. flex swings it
  forward (about x), abd away from the body (about y), rot turns it about its
  own axis (outwards), bend swings the distal bone towards the limb's local
  +y (elbow flexion; knees bend with negative values). side: +1 right, -1
  left, mirroring abd and rot.
  """
  n = len(root)
  angles = np.stack([np.broadcast_to(a, (n,)) for a in (flex, -side * np.asarray(abd),
                                                        -side * np.asarray(rot))], axis=-1)
  r = r_parent @ Rotation.from_euler("XYZ", angles).as_matrix()
  bend = np.broadcast_to(bend, (n,))
  middle = root + l1 * _apply(r, [0, 0, -1])
  lower = np.stack([np.zeros(n), np.sin(bend), -np.cos(bend)], axis=-1)
  return middle, middle + l2 * _apply(r, lower)


def _limb_ik(root, target, hint, l1: float, l2: float):
  """Two-bone limb from root [T, 3] reaching for target [T, 3] -> (middle, end) [T, 3].

  The middle joint bulges towards `hint` ([3] or [T, 3], not along the limb);
  an out-of-reach target leaves the limb straight, pointing at it.
  """
  v = np.broadcast_to(target, root.shape) - root
  dist = np.linalg.norm(v, axis=-1)
  u = v / dist[:, None]
  reach = np.clip(dist, abs(l1 - l2) + 1e-6, (l1 + l2) * (1 - 1e-9))
  along = (l1**2 - l2**2 + reach**2) / (2 * reach)
  height = np.sqrt(np.maximum(l1**2 - along**2, 0.0))
  hint = np.broadcast_to(hint, root.shape)
  w = _unit(hint - np.sum(hint * u, axis=-1, keepdims=True) * u)
  return root + along[:, None] * u + height[:, None] * w, root + reach[:, None] * u


def _arms(joints, r_thorax, body: BodyParams, **angles):
  for side, name in ((1, "right"), (-1, "left")):
    joints[f"{name}_elbow"], joints[f"{name}_wrist"] = _limb_fk(
        joints[f"{name}_shoulder"], r_thorax, side, body.upper_arm, body.forearm, **angles)


def _planted_legs(joints, body: BodyParams, ankles: dict, knee_hint) -> None:
  """Knees and ankles reaching for ankle targets {"right"/"left": [3] or [T, 3]}."""
  for name in ("right", "left"):
    joints[f"{name}_knee"], joints[f"{name}_ankle"] = _limb_ik(
        joints[f"{name}_hip"], ankles[name], knee_hint, body.thigh, body.shin)


def _stand(c: _Clip, pelvis_shift=(0.0, 0.0, 0.0), pitch=0.0, lumbar=0.0, thoracic=0.0, nod=0.0,
           stance: float | None = None):
  """Upright body on flat feet (ankles at +-stance, y = 0); the pelvis moves by
  pelvis_shift ([3] or [T, 3]) from its upright height and pitches forward by `pitch`."""
  b = c.body
  stance = b.hip_half_width if stance is None else stance
  pelvis = np.array([0, 0, b.ankle_height + 0.995 * b.leg]) + np.broadcast_to(pelvis_shift,
                                                                               (c.n, 3))
  r_pelvis = _rot("x", -np.asarray(pitch), c.n)
  joints, r_thorax, _ = _trunk(b, pelvis, r_pelvis, lumbar, thoracic, nod)
  feet = {name: np.array([side * stance, 0, b.ankle_height]) for side, name in ((1, "right"),
                                                                                 (-1, "left"))}
  _planted_legs(joints, b, feet, _apply(r_pelvis, [0, 1, 0]))
  return joints, r_thorax


def _hip_height_limit(b: BodyParams, foot: np.ndarray, hip_x, hip_y) -> np.ndarray:
  """[T] highest hip z from which a (nearly straight) leg still reaches foot [T, 3]."""
  horizontal2 = (foot[:, 0] - hip_x)**2 + (foot[:, 1] - hip_y)**2
  return foot[:, 2] + np.sqrt(np.maximum((0.98 * b.leg)**2 - horizontal2, 0.0))


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _squats(c: _Clip):
  b, d = c.body, c.depth
  stance = b.hip_half_width * c.rng.uniform(1.0, 1.6)
  lean = c.rng.uniform(0.7, 1.3)
  shift = np.stack([np.zeros(c.n), -0.35 * b.thigh * d, -0.45 * b.leg * d], axis=-1)
  pitch, lumbar, thoracic = lean * 30 * _DEG * d, 10 * _DEG * d, 5 * _DEG * d
  joints, r_thorax = _stand(c, shift, pitch=pitch, lumbar=lumbar, thoracic=thoracic,
                            nod=-15 * _DEG * d, stance=stance)
  forward = (10 + 75 * d) * _DEG + pitch + lumbar + thoracic  # arms reach forward for balance
  _arms(joints, r_thorax, b, flex=forward, abd=8 * _DEG, bend=10 * _DEG)
  return joints


def _lunges(c: _Clip):
  """Alternating forward lunges: step out, sink, rise, step back; legs swap every rep."""
  b, s = c.body, c.progress
  step_len = c.rng.uniform(0.33, 0.43) * b.height * (0.8 + 0.2 * c.rom)
  step = _smoothstep(s / 0.35)
  sink = c.rom * _smoothstep((s - 0.3) / 0.7)
  front_is_left = (np.floor(c.phase / (2 * np.pi)) % 2).astype(bool)
  front = np.stack([np.zeros(c.n), step_len * step,
                    b.ankle_height + 0.06 * b.height * np.sin(np.pi * step)], axis=-1)
  back = np.stack([np.zeros(c.n), np.zeros(c.n), b.ankle_height + 0.04 * b.height * sink],
                  axis=-1)
  pelvis_y = 0.5 * step_len * step
  pelvis_z = np.minimum.reduce([
      b.ankle_height + 0.995 * b.leg - 0.33 * b.leg * sink,
      _hip_height_limit(b, front, 0.0, pelvis_y), _hip_height_limit(b, back, 0.0, pelvis_y)])
  pelvis = np.stack([np.zeros(c.n), pelvis_y, pelvis_z], axis=-1)
  joints, r_thorax, _ = _trunk(b, pelvis, _rot("x", -5 * _DEG * sink, c.n),
                               thoracic=3 * _DEG * sink)
  feet = {}
  for side, name in ((1, "right"), (-1, "left")):
    is_front = front_is_left if side < 0 else ~front_is_left
    foot = np.where(is_front[:, None], front, back)
    foot[:, 0] = side * b.hip_half_width
    feet[name] = foot
  _planted_legs(joints, b, feet, np.array([0.0, 1.0, 0.0]))
  _arms(joints, r_thorax, b, flex=5 * _DEG, abd=6 * _DEG, bend=10 * _DEG)
  return joints


def _jumping_jacks(c: _Clip):
  """Feet jump apart as the arms swing overhead, and back; airborne mid-transition."""
  b, d = c.body, c.depth
  spread = c.rng.uniform(0.12, 0.18) * b.height * d
  hop = c.rng.uniform(0.03, 0.06) * b.height
  lift = hop * _smoothstep((np.sin(c.phase)**2 - 0.4) / 0.6)
  landing = 0.05 * b.leg * np.cos(c.phase)**2
  feet = {name: np.stack([side * (0.9 * b.hip_half_width + spread), np.zeros(c.n),
                          b.ankle_height + lift], axis=-1)
          for side, name in ((1, "right"), (-1, "left"))}
  pelvis_z = np.minimum(b.ankle_height + 0.995 * b.leg + lift - landing,
                        _hip_height_limit(b, feet["right"], b.hip_half_width, 0.0))
  pelvis = np.stack([np.zeros(c.n), np.zeros(c.n), pelvis_z], axis=-1)
  joints, r_thorax, _ = _trunk(b, pelvis, np.broadcast_to(np.eye(3), (c.n, 3, 3)))
  _planted_legs(joints, b, feet, np.array([0.0, 1.0, 0.0]))
  _arms(joints, r_thorax, b, flex=5 * _DEG, abd=(10 + 150 * d) * _DEG, bend=15 * _DEG)
  return joints


def _pushups(c: _Clip):
  """Prone plank pivoting on the toes; hands planted under the shoulders."""
  b, d = c.body, c.depth
  hand_half_width = b.shoulder_half_width * c.rng.uniform(1.3, 1.8)
  ankle_z = b.ankle_height + 0.02 * b.height
  wrist_z = 0.03 * b.height
  to_shoulder = b.leg + b.lower_spine + b.upper_spine
  top = wrist_z + math.sqrt((0.97 * b.arm)**2 - (hand_half_width - b.shoulder_half_width)**2)
  bottom = wrist_z + 0.3 * b.arm
  incline_top = math.asin((top - ankle_z) / to_shoulder)
  incline_bottom = math.asin((bottom - ankle_z) / to_shoulder)
  incline = incline_top - (incline_top - incline_bottom) * d
  r_pelvis = _rot("x", incline - np.pi / 2, c.n)
  along = r_pelvis[:, :, 2]
  pelvis = np.array([0.0, 0.0, ankle_z]) + b.leg * along
  joints, _, _ = _trunk(b, pelvis, r_pelvis, nod=15 * _DEG)
  for name in ("right", "left"):
    joints[f"{name}_knee"] = joints[f"{name}_hip"] - b.thigh * along
    joints[f"{name}_ankle"] = joints[f"{name}_knee"] - b.shin * along
  hand_y = to_shoulder * math.cos(incline_top) + 0.03 * b.height
  for side, name in ((1, "right"), (-1, "left")):
    joints[f"{name}_elbow"], joints[f"{name}_wrist"] = _limb_ik(
        joints[f"{name}_shoulder"], np.array([side * hand_half_width, hand_y, wrist_z]),
        np.array([side, -0.5, 0.5]), b.upper_arm, b.forearm)
  return joints


def _situps(c: _Clip):
  """Supine, knees bent, feet on the floor, hands behind the head; the trunk curls up."""
  b, d = c.body, c.depth
  pelvis = np.broadcast_to([0.0, 0.0, 0.06 * b.height], (c.n, 3))
  r_pelvis = _rot("x", np.pi / 2 - 20 * _DEG * d, c.n)
  joints, r_thorax, r_head = _trunk(b, pelvis, r_pelvis, lumbar=35 * _DEG * d,
                                    thoracic=30 * _DEG * d, nod=(10 + 15 * d) * _DEG)
  knee_y = c.rng.uniform(0.55, 0.7) * b.leg
  feet = {name: np.array([side * b.hip_half_width, knee_y, b.ankle_height])
          for side, name in ((1, "right"), (-1, "left"))}
  _planted_legs(joints, b, feet, np.array([0.0, 0.0, 1.0]))
  for side, name in ((1, "right"), (-1, "left")):
    behind_head = joints["head"] + _apply(r_head, b.height * np.array([side * 0.04, -0.05, -0.03]))
    joints[f"{name}_elbow"], joints[f"{name}_wrist"] = _limb_ik(
        joints[f"{name}_shoulder"], behind_head, _apply(r_thorax, [side, 0.0, 0.3]),
        b.upper_arm, b.forearm)
  return joints


def _dumbbell_rows(c: _Clip):
  """Bent over at the hips; the upper arms pull back while the forearms hang."""
  b, d = c.body, c.depth
  pitch = c.rng.uniform(45, 60) * _DEG
  lumbar, thoracic = 10 * _DEG, 5 * _DEG
  joints, r_thorax = _stand(c, (0.0, -0.12 * b.height / 1.75, -0.06 * b.leg), pitch=pitch,
                            lumbar=lumbar, thoracic=thoracic, nod=-30 * _DEG,
                            stance=b.hip_half_width * 1.2)
  hang = pitch + lumbar + thoracic
  flex = hang * (1 - d) - 25 * _DEG * d
  _arms(joints, r_thorax, b, flex=flex, abd=12 * _DEG, bend=hang - flex)
  return joints


def _shoulder_press(c: _Clip):
  """Dumbbells pressed from shoulder height to overhead; forearms stay vertical."""
  b, d = c.body, c.depth
  joints, r_thorax = _stand(c, stance=b.hip_half_width * 1.2)
  abd = (80 + 90 * d) * _DEG
  _arms(joints, r_thorax, b, flex=10 * _DEG, abd=abd, rot=90 * _DEG, bend=np.pi - abd)
  return joints


def _tricep_extensions(c: _Clip):
  """Overhead: upper arms up, forearms lowered behind the head and extended."""
  b, d = c.body, c.depth
  joints, r_thorax = _stand(c)
  _arms(joints, r_thorax, b, flex=c.rng.uniform(155, 170) * _DEG, abd=10 * _DEG,
        bend=(15 + 120 * d) * _DEG)
  return joints


def _biceps_curls(c: _Clip):
  b, d = c.body, c.depth
  joints, r_thorax = _stand(c)
  _arms(joints, r_thorax, b, flex=5 * _DEG, abd=8 * _DEG, bend=(10 + 125 * d) * _DEG)
  return joints


def _lateral_raises(c: _Clip):
  b, d = c.body, c.depth
  joints, r_thorax = _stand(c)
  _arms(joints, r_thorax, b, flex=10 * _DEG, abd=(8 + 85 * d) * _DEG, bend=15 * _DEG)
  return joints


_BUILDERS = {
    "squats": _squats, "pushups": _pushups, "dumbbell_shoulder_press": _shoulder_press,
    "lunges": _lunges, "dumbbell_rows": _dumbbell_rows, "situps": _situps,
    "tricep_extensions": _tricep_extensions, "dumbbell_biceps_curls": _biceps_curls,
    "lateral_shoulder_raises": _lateral_raises, "jumping_jacks": _jumping_jacks,
}
assert tuple(_BUILDERS) == EXERCISES
