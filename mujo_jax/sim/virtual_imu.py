"""Virtual IMU: accelerometer and gyroscope readings simulated from joint positions.

IMUTube-style (Kwon et al., 2020): a sensor rigidly attached to a body segment
moves with it, so its specific force and angular velocity follow from the
joint trajectories alone. Motion capture, procedurally animated poses
(`mujo_jax.sim.motion`) and 3D pose estimated from video all go through this one
function, which therefore takes nothing but joint positions.

Pipeline for `positions` [T, J, 3] sampled at `fps`:

1. Gap filling and resampling. Every joint that a requested sensor needs is
   fitted with a `scipy.interpolate.CubicSpline` through its finite frames and
   evaluated at t_k = k / rate_hz for k = 0 .. T'-1, where

       T' = floor((T - 1) * rate_hz / fps) + 1

   i.e. every output sample whose time lies within the span [0, (T-1)/fps] of
   the input frames, so nothing is extrapolated (fps == rate_hz gives T' = T).
   Runs of missing frames (any non-finite coordinate) up to `max_gap_s` long
   are bridged by the spline; at either end of the clip they hold the nearest
   valid value. A longer run, or a joint with no finite frame, raises a
   ValueError naming the joint: callers count and drop such windows.
2. Smoothing and differentiation. `scipy.signal.savgol_filter` (cubic, window
   `smoothing_s`) gives smoothed joint positions and, from the same local
   fits, their second derivative.
3. Sensor position: a fixed point `fraction` of the way along a segment
   (proximal -> distal joint), so its acceleration is the same blend of the
   two joints' accelerations. wrist and forearm sit 0.9 and 0.5 along
   elbow -> wrist, upper_arm, thigh and shin mid-segment, foot midway along
   ankle -> foot, or at the ankle end of the shin (with the shin's frame) when
   the skeleton has no foot joint; chest and back 0.8 and 0.5 along
   spine -> thorax, pelvis and head at those joints. `placement` moves any
   sensor along its segment (e.g. {"left_wrist": 0.7}: a watch worn higher up
   the forearm). Sensors sit on the bone line: no offset to the skin surface.
4. Sensor frames R_t [3, 3], columns = the sensor's x, y, z axes in world
   coordinates:
   - torso sensors (chest, back, pelvis, head) take a frame from a joint
     triangle: z along an "up" joint pair (e.g. pelvis -> spine), x along the
     left -> right pair (hips or shoulders) made orthogonal to z, y = z x x,
     which points forward. back is the chest frame turned 180 degrees about z
     (x to the body's left, y backwards). The head frame uses the shoulders for
     x, so head yaw relative to the shoulders is not seen.
   - limb sensors: x along the segment (proximal -> distal). Twist about the
     segment cannot be seen from two joint positions, and any frame built from
     a third joint degenerates when the limb straightens, so the limb frame is
     parallel-transported: each step turns it by the minimal rotation carrying
     the segment direction at t to t+1. The gyroscope therefore reads no
     rotation about the segment axis (gyr_x ~ 0). The twist is pinned by a
     rest pose: at rest (arms and legs hanging, body upright) x points down,
     y to the body's left and z forward, in the frame of the segment's
     reference torso sensor (chest for arms, pelvis for legs; a foot segment
     rests pointing forward, z up). At the sample where the segment is closest
     to its rest direction, the frame is the rest frame turned by the minimal
     rotation onto the segment; transport carries it forwards and backwards
     from there. Seeding there, not at t = 0, makes the frame independent of
     where in a repetition the clip starts. Over a path that loops
     (arm circles), transport gains the enclosed solid angle as twist per
     loop; back-and-forth exercise motion does not. Left and right limbs share
     the convention (frames are not mirrored).
5. Readings, each in the sensor frame: specific force R_t^T (a_t - g) with
   g = -STANDARD_GRAVITY * up (a sensor at rest reads +9.80665 m/s^2 along up), and angular
   velocity from the relative rotation R_{t-1}^T R_{t+1} (its rotation vector
   over 2 dt, expressed in frame t; one-sided at the ends).

The result is `[S, T', 6]` float32: acc_x, acc_y, acc_z, gyr_x, gyr_y, gyr_z.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import interpolate
from scipy import signal
from scipy.spatial.transform import Rotation

from mujo_jax.sim import skeletons
from mujo_jax import units

_DOWN = (0.0, 0.0, -1.0)
_FORWARD = (0.0, 1.0, 0.0)
_UP = (0.0, 0.0, 1.0)
_POLYORDER = 3


@dataclasses.dataclass(frozen=True)
class Segment:
  """A point `fraction` of the way from `proximal` to `distal` (vocabulary joint names).

  `rest_x` / `rest_z` are the sensor's x and z axes at the rest pose, in the
  reference torso frame (used by limb sensors only); rest_x is the segment's
  rest direction.
  """
  proximal: str
  distal: str
  fraction: float
  rest_x: tuple[float, float, float] = _DOWN
  rest_z: tuple[float, float, float] = _FORWARD


@dataclasses.dataclass(frozen=True)
class TorsoLocation:
  """A sensor on the trunk or head, its frame from a joint triangle (see module doc)."""
  name: str
  site: Segment
  up: tuple[str, str]
  lateral: tuple[str, str]
  faces_back: bool = False


@dataclasses.dataclass(frozen=True)
class LimbLocation:
  """A sensor on a limb segment, with a parallel-transported frame.

  `sites` are candidates, the first whose joints the skeleton has wins;
  `reference` names the TorsoLocation whose frame defines the rest pose.
  """
  name: str
  sites: tuple[Segment, ...]
  reference: str


# name, proximal, distal, fraction, reference torso location
_LIMB_SITES = (("wrist", "elbow", "wrist", 0.9, "chest"),
               ("forearm", "elbow", "wrist", 0.5, "chest"),
               ("upper_arm", "shoulder", "elbow", 0.5, "chest"),
               ("thigh", "hip", "knee", 0.5, "pelvis"),
               ("shin", "knee", "ankle", 0.5, "pelvis"))


def _limbs(side: str) -> tuple[LimbLocation, ...]:
  """One side's limb locations; the foot falls back to the ankle end of the shin."""
  locations = [LimbLocation(f"{side}_{name}", (Segment(f"{side}_{a}", f"{side}_{b}", f),), ref)
               for name, a, b, f, ref in _LIMB_SITES]
  foot = (Segment(f"{side}_ankle", f"{side}_foot", 0.5, rest_x=_FORWARD, rest_z=_UP),
          Segment(f"{side}_knee", f"{side}_ankle", 1.0))
  return (*locations, LimbLocation(f"{side}_foot", foot, "pelvis"))


_CHEST_AXES = dict(up=("spine", "thorax"), lateral=("left_shoulder", "right_shoulder"))
_LOCATIONS: dict[str, TorsoLocation | LimbLocation] = {
    loc.name: loc for loc in (
        *_limbs("left"), *_limbs("right"),
        TorsoLocation("chest", Segment("spine", "thorax", 0.8), **_CHEST_AXES),
        TorsoLocation("pelvis", Segment("pelvis", "spine", 0.0), up=("pelvis", "spine"),
                      lateral=("left_hip", "right_hip")),
        TorsoLocation("head", Segment("neck", "head", 1.0), up=("thorax", "head"),
                      lateral=("left_shoulder", "right_shoulder")),
        TorsoLocation("back", Segment("spine", "thorax", 0.5), faces_back=True, **_CHEST_AXES),
    )
}

SENSOR_LOCATIONS: tuple[str, ...] = (
    "left_wrist", "right_wrist", "left_forearm", "right_forearm", "left_upper_arm",
    "right_upper_arm", "left_thigh", "right_thigh", "left_shin", "right_shin", "left_foot",
    "right_foot", "chest", "pelvis", "head", "back")
assert set(SENSOR_LOCATIONS) == set(_LOCATIONS)


@dataclasses.dataclass(frozen=True)
class ImuNoise:
  """Sensor noise: white noise per sample plus a bias per sensor and axis.

  The bias is drawn once per `simulate_imu` call from N(0, *_bias_std) and held
  constant over the clip. Units: m/s^2 for acc, rad/s for gyr.
  """
  acc_std: float = 0.0
  acc_bias_std: float = 0.0
  gyr_std: float = 0.0
  gyr_bias_std: float = 0.0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"ImuNoise.{field.name} must be finite and >= 0, got {value}")


def num_samples(num_frames: int, fps: float, rate_hz: float) -> int:
  """T' = floor((T - 1) * rate_hz / fps) + 1: the samples at k / rate_hz within the input span."""
  return math.floor((num_frames - 1) * rate_hz / fps + 1e-9) + 1


def smoothing_window(smoothing_s: float, rate_hz: float) -> int:
  """Savitzky-Golay window in samples: the odd number nearest smoothing_s * rate_hz, at least 5."""
  return max(_POLYORDER + 2, 2 * round(smoothing_s * rate_hz / 2) + 1)


def simulate_imu(positions: np.ndarray, fps: float, skeleton: str | skeletons.Skeleton = "h36m17",
                 locations: Sequence[str] | None = None, rate_hz: float = 50.0,
                 up: Sequence[float] = _UP, smoothing_s: float = 0.2, max_gap_s: float = 0.25,
                 noise: ImuNoise | None = None,
                 rng: np.random.Generator | None = None,
                 placement: Mapping[str, float] | None = None) -> np.ndarray:
  """Accelerometer and gyroscope readings `[S, T', 6]` float32 of sensors worn on a moving body.

  positions: [T, J, 3] joint positions in metres, in a world frame whose
    vertical is `up`, J = the skeleton's joint count; NaN marks missing joints.
  fps: frame rate of `positions`. rate_hz: output rate; T' as in `num_samples`.
  locations: names from SENSOR_LOCATIONS (default: all, in that order); S = their number.
  smoothing_s: Savitzky-Golay window; T' must reach `smoothing_window(smoothing_s, rate_hz)`.
  max_gap_s: longest run of missing frames that is interpolated.
  noise: optional ImuNoise, drawn from `rng` (required then).
  placement: location name -> fraction in [0, 1] of the way along its segment, proximal ->
    distal, replacing the default site (module docstring, step 3); only the acceleration
    depends on it (the segment's frame, hence the gyroscope, does not).
  Columns: acc_x, acc_y, acc_z (specific force incl. gravity, m/s^2), gyr_x,
  gyr_y, gyr_z (rad/s), each in the sensor's own frame (module docstring).
  """
  skel = skeleton if isinstance(skeleton, skeletons.Skeleton) else skeletons.get_skeleton(skeleton)
  names = _check_locations(locations)
  positions = np.asarray(positions, dtype=np.float64)
  if positions.ndim != 3 or positions.shape[1:] != (skel.num_joints, 3):
    raise ValueError(f"positions must be [T, {skel.num_joints}, 3] for skeleton {skel.name!r} "
                     f"({skel.num_joints} joints), got shape {positions.shape}")
  for arg, value in (("fps", fps), ("rate_hz", rate_hz), ("smoothing_s", smoothing_s)):
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"{arg} must be finite and > 0, got {value}")
  if not (math.isfinite(max_gap_s) and max_gap_s >= 0):
    raise ValueError(f"max_gap_s must be finite and >= 0, got {max_gap_s}")
  if noise is not None and rng is None:
    raise ValueError("rng (np.random.Generator) is required when noise is given")
  up = _unit_vector(up)

  num_frames = positions.shape[0]
  n_out = num_samples(num_frames, fps, rate_hz) if num_frames else 0
  window = smoothing_window(smoothing_s, rate_hz)
  if n_out < window:
    need = math.ceil((window - 1) * fps / rate_hz - 1e-9) + 1
    raise ValueError(f"positions has {num_frames} frames at fps={fps}, giving {n_out} samples at "
                     f"rate_hz={rate_hz}, fewer than the {window}-sample smoothing window "
                     f"(smoothing_s={smoothing_s}); need at least {need} frames")

  plan = [_resolve(_LOCATIONS[name], skel) for name in names]
  plan = _place(plan, placement)
  torso_names = sorted({p.torso for p in plan})
  torso_plans = {name: _resolve(_LOCATIONS[name], skel) for name in torso_names}
  needed = sorted({j for p in (*plan, *torso_plans.values()) for j in p.joints})

  dt = 1.0 / rate_hz
  joints = _resample(positions, needed, fps, np.arange(n_out) * dt, max_gap_s, skel)
  smooth = signal.savgol_filter(joints, window, _POLYORDER, axis=0)
  joint_acc = signal.savgol_filter(joints, window, _POLYORDER, deriv=2, delta=dt, axis=0)

  torso_frames = {name: _torso_frame(smooth, p) for name, p in torso_plans.items()}
  frames = np.empty((len(plan), n_out, 3, 3))
  limbs = [s for s, p in enumerate(plan) if p.rest is not None]
  for s, p in enumerate(plan):
    if p.rest is None:
      frames[s] = torso_frames[p.name]
  if limbs:
    frames[limbs] = _limb_frames(smooth, [plan[s] for s in limbs], torso_frames)

  weights = np.zeros((len(plan), skel.num_joints))
  for s, p in enumerate(plan):
    weights[s, p.site[0]] += 1.0 - p.site[2]
    weights[s, p.site[1]] += p.site[2]
  specific_force = np.tensordot(weights, joint_acc, axes=(1, 1)) + units.STANDARD_GRAVITY * up
  acc = np.sum(frames * specific_force[..., :, None], axis=-2)
  gyr = _body_rates(frames, dt)
  out = np.concatenate([acc, gyr], axis=-1)

  if noise is not None:
    std = np.repeat([noise.acc_std, noise.gyr_std], 3)
    bias_std = np.repeat([noise.acc_bias_std, noise.gyr_bias_std], 3)
    out = (out + rng.normal(size=(len(plan), 1, 6)) * bias_std
           + rng.normal(size=out.shape) * std)
  if not np.isfinite(out).all():
    raise ValueError("simulated IMU has non-finite values; positions are degenerate "
                     f"(skeleton {skel.name!r}, locations {names})")
  return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """A location resolved against a skeleton: joint indices instead of names."""
  name: str
  site: tuple[int, int, float]
  torso: str                               # own name (torso) or reference (limb)
  up: tuple[int, int] | None = None        # torso only
  lateral: tuple[int, int] | None = None   # torso only
  faces_back: bool = False
  rest: np.ndarray | None = None           # limb only: [3, 3] rest frame in torso coordinates

  @property
  def joints(self) -> set[int]:
    return {self.site[0], self.site[1], *(self.up or ()), *(self.lateral or ())}


def _check_locations(locations: Sequence[str] | None) -> tuple[str, ...]:
  if locations is None:
    return SENSOR_LOCATIONS
  if isinstance(locations, str):
    raise ValueError(f"locations must be a sequence of names, not the string {locations!r}")
  names = tuple(locations)
  if not names:
    raise ValueError("locations is empty")
  for name in names:
    if name not in _LOCATIONS:
      raise ValueError(f"unknown sensor location {name!r}; known: {', '.join(SENSOR_LOCATIONS)}")
  return names


def _resolve(loc: TorsoLocation | LimbLocation, skel: skeletons.Skeleton) -> _Plan:
  if isinstance(loc, TorsoLocation):
    return _Plan(loc.name, _site(loc.site, skel), loc.name,
                 up=(skel.index(loc.up[0]), skel.index(loc.up[1])),
                 lateral=(skel.index(loc.lateral[0]), skel.index(loc.lateral[1])),
                 faces_back=loc.faces_back)
  for seg in loc.sites:
    if skel.has(seg.proximal) and skel.has(seg.distal):
      x, z = np.array(seg.rest_x), np.array(seg.rest_z)
      return _Plan(loc.name, _site(seg, skel), loc.reference,
                   rest=np.stack([x, np.cross(z, x), z], axis=-1))
  wanted = " or ".join(f"{s.proximal}->{s.distal}" for s in loc.sites)
  raise ValueError(f"location {loc.name!r} needs segment {wanted}, which skeleton "
                   f"{skel.name!r} lacks")


def default_placement(locations: Sequence[str] | None = None,
                      skeleton: str | skeletons.Skeleton = "h36m17") -> dict[str, float]:
  """Location -> the fraction along its segment (proximal -> distal) where `simulate_imu` puts
  the sensor by default on this skeleton: the base that a `placement` jitters around."""
  skel = skeleton if isinstance(skeleton, skeletons.Skeleton) else skeletons.get_skeleton(skeleton)
  names = SENSOR_LOCATIONS if locations is None else tuple(locations)
  unknown = [n for n in names if n not in _LOCATIONS]
  if unknown:
    raise ValueError(f"unknown sensor locations {unknown}; known: {list(SENSOR_LOCATIONS)}")
  return {n: float(_resolve(_LOCATIONS[n], skel).site[2]) for n in names}


def _place(plan: list[_Plan], placement: Mapping[str, float] | None) -> list[_Plan]:
  """The plans with each sensor in `placement` moved to its fraction along the segment."""
  placement = dict(placement or {})
  planned = {p.name for p in plan}
  for name, fraction in placement.items():
    if name not in planned:
      raise ValueError(f"placement names {name!r}, which is not among the requested "
                       f"locations {sorted(planned)}")
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
      raise ValueError(f"placement[{name!r}] must be a fraction in [0, 1] along the segment, "
                       f"got {fraction!r}")
  return [dataclasses.replace(p, site=(p.site[0], p.site[1], float(placement[p.name])))
          if p.name in placement else p for p in plan]


def _site(seg: Segment, skel: skeletons.Skeleton) -> tuple[int, int, float]:
  return skel.index(seg.proximal), skel.index(seg.distal), seg.fraction


def _unit_vector(v: Sequence[float]) -> np.ndarray:
  v = np.asarray(v, dtype=np.float64)
  norm = np.linalg.norm(v) if v.shape == (3,) else np.nan
  if not (np.isfinite(norm) and norm > 0):
    raise ValueError(f"up must be a finite non-zero 3-vector, got {v.tolist()}")
  return v / norm


def _resample(positions: np.ndarray, needed: list[int], fps: float, t_out: np.ndarray,
              max_gap_s: float, skel: skeletons.Skeleton) -> np.ndarray:
  """[T', J, 3] needed joints splined at t_out, gaps bridged (module doc step 1); others zero."""
  t_in = np.arange(positions.shape[0]) / fps
  valid = np.isfinite(positions).all(axis=-1)
  out = np.zeros((len(t_out), skel.num_joints, 3))
  complete = [j for j in needed if valid[:, j].all()]
  if complete and len(t_out) == len(t_in) and np.allclose(t_out, t_in, rtol=0, atol=1e-9):
    out[:, complete] = positions[:, complete]
  elif complete:
    out[:, complete] = interpolate.CubicSpline(t_in, positions[:, complete], axis=0)(t_out)
  max_gap = math.floor(max_gap_s * fps + 1e-9)
  for j in needed:
    if j in complete:
      continue
    name = f"joint {skel.joint_names[j]!r} of skeleton {skel.name!r}"
    if not valid[:, j].any():
      raise ValueError(f"{name} is missing in every frame")
    gap = _longest_run(~valid[:, j])
    if gap > max_gap:
      raise ValueError(f"{name} is missing for {gap} consecutive frames ({gap / fps:.3g} s), "
                       f"more than max_gap_s={max_gap_s}")
    t_valid = t_in[valid[:, j]]
    if len(t_valid) == 1:
      out[:, j] = positions[valid[:, j], j]
      continue
    spline = interpolate.CubicSpline(t_valid, positions[valid[:, j], j], axis=0)
    out[:, j] = spline(np.clip(t_out, t_valid[0], t_valid[-1]))
  return out


def _longest_run(mask: np.ndarray) -> int:
  edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
  starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
  return int((ends - starts).max()) if len(starts) else 0


def _torso_frame(pos: np.ndarray, p: _Plan) -> np.ndarray:
  """[T, 3, 3] frame: z along up, x along lateral orthogonalised, y = z x x."""
  z = pos[:, p.up[1]] - pos[:, p.up[0]]
  lateral = pos[:, p.lateral[1]] - pos[:, p.lateral[0]]
  z_norm = np.linalg.norm(z, axis=-1)
  if z_norm.min() < 1e-6:
    raise ValueError(f"location {p.name!r}: its up joints coincide, no frame")
  z = z / z_norm[:, None]
  x = lateral - np.sum(lateral * z, axis=-1, keepdims=True) * z
  x_norm = np.linalg.norm(x, axis=-1)
  if (x_norm < 0.1 * np.linalg.norm(lateral, axis=-1)).any() or x_norm.min() < 1e-6:
    raise ValueError(f"location {p.name!r}: its lateral joints are (nearly) parallel to its up "
                     "axis or coincide, no frame")
  x = x / x_norm[:, None]
  y = np.cross(z, x)
  if p.faces_back:
    x, y = -x, -y
  return np.stack([x, y, z], axis=-1)


def _limb_frames(pos: np.ndarray, plans: list[_Plan],
                 torso_frames: dict[str, np.ndarray]) -> np.ndarray:
  """[L, T, 3, 3] parallel-transported frames, x along each segment, seeded where
  the segment is nearest its rest direction (module doc step 4)."""
  d = np.stack([pos[:, p.site[1]] - pos[:, p.site[0]] for p in plans])
  norm = np.linalg.norm(d, axis=-1)
  for p, n in zip(plans, norm):
    if n.min() < 1e-6:
      raise ValueError(f"location {p.name!r}: its segment has zero length, no direction")
  d = d / norm[..., None]

  transport = np.empty(d.shape + (3,))
  transport[:, 0] = np.eye(3)
  transport[:, 1:] = _prefix_products(_min_rotations(d[:, :-1], d[:, 1:], [p.name for p in plans]))
  frames = np.empty_like(transport)
  for i, p in enumerate(plans):
    rest = torso_frames[p.torso] @ p.rest
    seed = np.argmax(np.sum(rest[:, :, 0] * d[i], axis=-1))
    seed_frame = _min_rotation(rest[seed, :, 0], d[i, seed], fallback_axis=rest[seed, :, 2])
    frames[i] = transport[i] @ (transport[i, seed].T @ seed_frame @ rest[seed])
  return frames


def _min_rotation(a: np.ndarray, b: np.ndarray, fallback_axis: np.ndarray) -> np.ndarray:
  """[3, 3] smallest rotation taking unit a to unit b (opposite: half turn about fallback_axis)."""
  cross = np.cross(a, b)
  sin, cos = np.linalg.norm(cross), float(a @ b)
  if sin < 1e-9:
    rotvec = np.zeros(3) if cos > 0 else np.pi * fallback_axis
  else:
    rotvec = cross / sin * np.arctan2(sin, cos)
  return Rotation.from_rotvec(rotvec).as_matrix()


def _min_rotations(a: np.ndarray, b: np.ndarray, names: list[str]) -> np.ndarray:
  """[..., 3, 3] smallest rotations taking unit vectors a [..., 3] to b [..., 3]."""
  cross = np.cross(a, b)
  sin = np.linalg.norm(cross, axis=-1)
  cos = np.sum(a * b, axis=-1)
  flipped = (sin < 1e-9) & (cos < 0)
  if flipped.any():
    name = names[np.argwhere(flipped)[0][0]]
    raise ValueError(f"location {name!r}: its segment reverses direction between two samples")
  scale = np.divide(np.arctan2(sin, cos), sin, out=np.ones_like(sin), where=sin > 1e-12)
  rotvec = cross * scale[..., None]
  return Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix().reshape(a.shape + (3,))


def _prefix_products(steps: np.ndarray) -> np.ndarray:
  """out[:, t] = steps[:, t] @ ... @ steps[:, 0] for steps [L, N, 3, 3], by log2(N) doublings."""
  out = steps.copy()
  shift = 1
  while shift < out.shape[1]:
    out[:, shift:] = out[:, shift:] @ out[:, :-shift]
    shift *= 2
  return out


def _body_rates(frames: np.ndarray, dt: float) -> np.ndarray:
  """[S, T, 3] angular velocity in each sensor's own frame from frames [S, T, 3, 3]."""
  def rotvec(rel):
    flat = rel.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat, assume_valid=True).as_rotvec().reshape(rel.shape[:-1])

  def relative(a, b):  # a^T b
    return np.swapaxes(a, -1, -2) @ b

  rates = np.empty(frames.shape[:-1])
  mid = rotvec(relative(frames[:, :-2], frames[:, 2:])) / (2 * dt)  # in frame t-1
  to_mid = relative(frames[:, 1:-1], frames[:, :-2])
  rates[:, 1:-1] = np.sum(to_mid * mid[..., None, :], axis=-1)
  rates[:, 0] = rotvec(relative(frames[:, :1], frames[:, 1:2]))[:, 0] / dt
  rates[:, -1] = rotvec(relative(frames[:, -2:-1], frames[:, -1:]))[:, 0] / dt
  return rates
