"""CMC-CMKM's skeleton preprocessing and its inertial and skeleton augmentations, in JAX.

Reproduces what the public CMC-CMKM code (razzu/cmc-cmkm: transforms/*.py, the UTD-MHAD
augmentation configs and configs/cmc_cmkm/cmc_cmkm_utd.yaml) does to a training example, as
pure functions that jit and vmap, so the augmentation can run on the accelerator inside the
training step. Our batches are time-major: imu [B, T, 6] (acc xyz, gyro xyz), pose [B, T, J, 3].

What the reference does, and so what this module does:
- The reference composes one `RandomApply(p)` per augmentation in the config's order (our
  tuples' order), each applied independently; skeleton jittering has probability 1 there.
- Inertial augmentations run *after* the reference's `Permute([1, 0])`, i.e. on [6, T]
  arrays, while their code indexes axis 0 as time and axis 1 as channels. So in effect
  "permutation" cuts the 6 *channels* into equal segments (with up to 3 segments: 1 or 2,
  i.e. acc and gyro as blocks) and reorders them, and "channel_shuffle" shuffles the T *time
  steps*. We reproduce that effective behaviour, because it is what produced the paper's
  numbers; `_permute_segments` and `_shuffle` take the axis, should the intended one be wanted.
- Inertial jittering and scaling draw one value per element (scaling's factor has the
  signal's shape), not per channel.
- Skeleton rotation and scaling are about joint 0 of each frame (the reference ignores its
  `anchor_joint` argument: it always centres on `x[:, 0]`); rotation draws one angle per axis
  from -10..10 step 2 degrees and applies Rx @ Ry @ Rz; shear is about the origin.
- Crop-and-resize keeps floor(U(0.8, 0.9) * T) frames from a uniform start and resamples them
  back to T frames with `scipy.signal.resample` (FFT, periodic): we apply the same linear map
  as a precomputed matrix per crop length, so a ramp is not kept a ramp (the FFT rings at the
  ends) exactly as in the reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal

from mujo_jax import units

IMU_AUGMENTATIONS: tuple[str, ...] = ("jitter", "scaling", "permutation", "channel_shuffle")
POSE_AUGMENTATIONS: tuple[str, ...] = ("jitter", "crop_and_resize", "scaling", "rotation",
                                       "shear")

# Reference parameters (configs/inertial_augmentations/augmentations_utd.yaml).
IMU_JITTER_SIGMA = 1.0
IMU_SCALING_SIGMA = 1.0
# The reference draws the segment count with numpy's randint(1, max_segments), whose upper
# bound is exclusive: 3 gives 1 or 2 segments.
IMU_PERMUTATION_MAX_SEGMENTS = 3

# Reference parameters (configs/skeleton_augmentations/augmentations_utd.yaml).
POSE_JITTER_SIGMA = 0.1
POSE_JITTER_PROBABILITY = 1.0
POSE_CROP_FRACTION = (0.8, 0.9)
POSE_SCALING_RANGE = (0.7, 1.2)
POSE_ROTATION_DEGREES: tuple[int, ...] = tuple(range(-10, 11, 2))
POSE_SHEAR_BETA = 0.2
# Joint that skeleton rotation and scaling are centred on, per frame (see module docstring).
POSE_TRANSFORM_CENTER_JOINT = 0
# The skeleton parameters `make_augmenter(params=...)` can override, and their defaults above.
POSE_PARAMS = {"jitter_sigma": POSE_JITTER_SIGMA, "crop_fraction": POSE_CROP_FRACTION,
               "scaling_range": POSE_SCALING_RANGE, "rotation_degrees": POSE_ROTATION_DEGREES,
               "shear_beta": POSE_SHEAR_BETA}
# The reference's *supervised* multimodal run trains on differently augmented skeletons
# (configs/supervised/mm_inertial_skeleton_supervised_utd.yaml), each transform always applied:
# VariableLengthRandomCrop(crop_p=0.7) of the raw trial before it is resampled to 50 frames
# (= crop-and-resize keeping floor(U(0.7, 1) * T) frames), Jittering(sigma=0.01) and
# RandomRotation(-5..5 degrees in steps of 1, about joint 0). Its inertial data is not augmented.
POSE_SUPERVISED_AUGMENTATIONS = ("jitter", "crop_and_resize", "rotation")
POSE_SUPERVISED_PARAMS = {"jitter_sigma": 0.01, "crop_fraction": (0.7, 1.0),
                          "rotation_degrees": tuple(range(-5, 6))}

_RAD_S_TO_DEG_S = 180.0 / math.pi


def imu_si_to_g_deg_s(x: jax.Array) -> jax.Array:
  """[..., 6] acc m/s^2 and gyro rad/s -> g and deg/s.

  UTD-MHAD stores g and deg/s and the reference augments and trains on those units (its
  jitter sigma of 1 is in them), while our readers convert to SI.
  """
  x = jnp.asarray(x)
  if x.shape[-1:] != (6,):
    raise ValueError(f"imu_si_to_g_deg_s expects [..., 6] (acc xyz, gyro xyz), got {x.shape}")
  scale = np.array([1.0 / units.STANDARD_GRAVITY] * 3 + [_RAD_S_TO_DEG_S] * 3)
  return x * jnp.asarray(scale, x.dtype)


def normalise_skeleton(x: jax.Array, center_joint: int = 2,
                       scale_joints: tuple[int, int] = (1, 2)) -> jax.Array:
  """[..., T, J, 3] -> recentred and rescaled, as the reference's RecenterJoints/NormalizeDistances.

  Per sequence, from the first frame (as the reference): every frame has the centre joint's
  frame-0 position subtracted and is divided by the frame-0 distance between the two scale
  joints, so the centre joint is at the origin and the scale joints 1 apart in frame 0 only.
  The reference does this before resampling the trial to T frames; applied after resampling,
  frame 0 is the resampled first frame (both steps are linear and commute otherwise). A zero
  distance (e.g. an all-zero padded example) divides by 1 instead of giving NaN.
  """
  x = jnp.asarray(x)
  if x.ndim < 3 or x.shape[-1] != 3:
    raise ValueError(f"normalise_skeleton expects [..., T, J, 3], got {x.shape}")
  first = x[..., 0, :, :]
  center = first[..., center_joint, :]
  dist = jnp.linalg.norm(first[..., scale_joints[0], :] - first[..., scale_joints[1], :],
                         axis=-1)
  dist = jnp.where(dist > 0, dist, jnp.ones_like(dist))
  return (x - center[..., None, None, :]) / dist[..., None, None, None]


def _permute_segments(key: jax.Array, x: jax.Array, axis: int, max_segments: int) -> jax.Array:
  """Cuts `axis` into n equal segments (np.array_split sizes) and reorders them at random.

  n is uniform in [1, max_segments) as numpy's randint draws it. JAX needs static shapes, so
  segment tables have a static max_segments - 1 rows and the rows beyond n are empty; the
  distribution of n, of the cuts and of the order is the reference's.
  """
  length = x.shape[axis]
  rows = max(1, min(max_segments - 1, length))
  count_key, order_key = jax.random.split(key)
  n = jax.random.randint(count_key, (), 1, rows + 1)
  k = jnp.arange(rows)
  q, r = length // n, length % n
  starts = k * q + jnp.minimum(k, r)
  sizes = jnp.where(k < n, q + (k < r), 0)
  # Uniform order of the n real segments; empty rows sort last.
  order = jnp.argsort(jnp.where(k < n, jax.random.uniform(order_key, (rows,)), 2.0))
  out_sizes = sizes[order]
  out_starts = jnp.cumsum(out_sizes) - out_sizes
  s = jnp.arange(length)
  j = jnp.sum((s[:, None] >= out_starts[None, :]) & (out_sizes[None, :] > 0), axis=1) - 1
  src = starts[order[j]] + s - out_starts[j]
  return jnp.take(x, src, axis=axis)


def _shuffle(key: jax.Array, x: jax.Array, axis: int) -> jax.Array:
  """Uniformly random permutation of `axis`."""
  return jnp.take(x, jax.random.permutation(key, x.shape[axis]), axis=axis)


def _imu_jitter(key, x):
  return x + IMU_JITTER_SIGMA * jax.random.normal(key, x.shape, x.dtype)


def _imu_scaling(key, x):
  return x * (1.0 + IMU_SCALING_SIGMA * jax.random.normal(key, x.shape, x.dtype))


def _imu_permutation(key, x):
  # [T, 6]: the reference's segments run over channels (see module docstring).
  return _permute_segments(key, x, axis=1, max_segments=IMU_PERMUTATION_MAX_SEGMENTS)


def _imu_channel_shuffle(key, x):
  # [T, 6]: the reference's "channel" axis is time (see module docstring).
  return _shuffle(key, x, axis=0)


@functools.cache
def _crop_resample_table(length: int, fraction: tuple[float, float] = POSE_CROP_FRACTION
                         ) -> tuple[int, np.ndarray]:
  """(shortest crop, [n_crops, length, longest crop]): Fourier resampling of each crop length.

  Column k of table[i] is scipy.signal.resample of a unit impulse at k in a crop of
  shortest + i frames; the resampling is linear, so table[i] @ crop is the resampled crop.
  """
  lo = max(1, math.floor(fraction[0] * length))
  hi = min(length, max(lo, math.floor(fraction[1] * length)))
  table = np.zeros((hi - lo + 1, length, hi), np.float64)
  for i, n in enumerate(range(lo, hi + 1)):
    table[i, :, :n] = signal.resample(np.eye(n), length, axis=0)
  return lo, table


def _crop_and_resize(x: jax.Array, start: jax.Array, crop_length: jax.Array,
                     fraction: tuple[float, float] = POSE_CROP_FRACTION) -> jax.Array:
  """[T, ...]: frames start .. start + crop_length - 1, Fourier-resampled back to T frames
  (crop_length within `fraction` of T)."""
  length = x.shape[0]
  lo, table = _crop_resample_table(length, tuple(fraction))
  weights = jnp.asarray(table, x.dtype)[jnp.clip(crop_length - lo, 0, table.shape[0] - 1)]
  frames = jnp.clip(start + jnp.arange(table.shape[2]), 0, length - 1)
  return jnp.einsum("tk,k...->t...", weights, x[frames], precision=jax.lax.Precision.HIGHEST)


def _rotation_matrix(degrees: jax.Array) -> jax.Array:
  """[3] angles about x, y, z in degrees -> Rx @ Ry @ Rz (column-vector convention)."""
  cx, cy, cz = jnp.cos(jnp.radians(degrees))
  sx, sy, sz = jnp.sin(jnp.radians(degrees))
  one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
  rx = jnp.array([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
  ry = jnp.array([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
  rz = jnp.array([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
  return rx @ ry @ rz


def _shear_matrix(factors: jax.Array) -> jax.Array:
  """[3] (shx, shy, shz) -> the reference's 3-D shear: row i has its factor off the diagonal."""
  return jnp.ones((3, 3), factors.dtype) * factors[:, None] * (1 - jnp.eye(3)) + jnp.eye(3)


def _pose_jitter(key, x, p):
  return x + p["jitter_sigma"] * jax.random.normal(key, x.shape, x.dtype)


def _pose_crop_and_resize(key, x, p):
  length_key, start_key = jax.random.split(key)
  fraction = jax.random.uniform(length_key, (), jnp.float32, *p["crop_fraction"])
  crop_length = jnp.floor(fraction * x.shape[0]).astype(jnp.int32)
  start = jax.random.randint(start_key, (), 0, x.shape[0] - crop_length + 1)
  return _crop_and_resize(x, start, crop_length, p["crop_fraction"])


def _about_center(x, matrix):
  """[T, J, 3]: center + matrix @ (joint - center) per frame, center = the frame's joint 0."""
  center = x[:, POSE_TRANSFORM_CENTER_JOINT:POSE_TRANSFORM_CENTER_JOINT + 1, :]
  return center + jnp.einsum("tjc,dc->tjd", x - center, matrix.astype(x.dtype),
                             precision=jax.lax.Precision.HIGHEST)


def _pose_scaling(key, x, p):
  factors = jax.random.uniform(key, (3,), jnp.float32, *p["scaling_range"])
  return _about_center(x, jnp.diag(factors))


def _pose_rotation(key, x, p):
  degrees = jax.random.choice(key, jnp.asarray(p["rotation_degrees"], jnp.float32), (3,))
  return _about_center(x, _rotation_matrix(degrees))


def _pose_shear(key, x, p):
  shear = _shear_matrix(p["shear_beta"] * jax.random.normal(key, (3,), jnp.float32))
  return jnp.einsum("tjc,dc->tjd", x, shear.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)


_AUGMENTATIONS = {
    "imu": (IMU_AUGMENTATIONS, {"jitter": _imu_jitter, "scaling": _imu_scaling,
                                "permutation": _imu_permutation,
                                "channel_shuffle": _imu_channel_shuffle}),
    "pose": (POSE_AUGMENTATIONS, {"jitter": _pose_jitter,
                                  "crop_and_resize": _pose_crop_and_resize,
                                  "scaling": _pose_scaling, "rotation": _pose_rotation,
                                  "shear": _pose_shear}),
}
_EXAMPLE_RANK = {"imu": 2, "pose": 3}
_LAST_DIM = {"imu": 6, "pose": 3}


def make_augmenter(modality: str, names: Sequence[str], probability: float = 0.75,
                   params: dict | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """fn(key, x) that augments a batch (imu [B, T, 6] or pose [B, T, J, 3]) as the reference.

  Each example gets its own key (split from `key`) and, per augmentation, its own draw of
  whether it applies (`probability`; pose jitter always applies, as in the reference) and of
  its parameters. The named augmentations run in the modality tuple's order whatever the order
  of `names`; an augmentation's draws are keyed by its name's place in that tuple, so choosing
  a subset leaves the others' draws unchanged. Shapes and dtype are kept; the math is done in
  at least float32. With `probability=1.0` and one name, that one augmentation is always
  applied (for tests). `params` overrides skeleton parameters (keys of POSE_PARAMS), e.g.
  POSE_SUPERVISED_PARAMS.
  """
  if modality not in _AUGMENTATIONS:
    raise ValueError(f"unknown modality {modality!r}; known: {sorted(_AUGMENTATIONS)}")
  known, functions = _AUGMENTATIONS[modality]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown {modality} augmentation(s) {unknown}; known: {list(known)}")
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"probability must be in [0, 1], got {probability}")
  chosen = [(i, n) for i, n in enumerate(known) if n in names]
  params = dict(params or {})
  if modality == "pose":
    unknown = sorted(set(params) - set(POSE_PARAMS))
    if unknown:
      raise ValueError(f"unknown pose augmentation parameter(s) {unknown}; known: "
                       f"{sorted(POSE_PARAMS)}")
    p = {**POSE_PARAMS, **{k: tuple(v) if isinstance(v, (list, tuple)) else v
                           for k, v in params.items()}}
    functions = {n: functools.partial(f, p=p) for n, f in functions.items()}
  elif params:
    raise ValueError(f"{modality} augmentations take no parameters, got {sorted(params)}")

  def augment_one(key, x):
    for index, name in chosen:
      gate_key, draw_key = jax.random.split(jax.random.fold_in(key, index))
      p = POSE_JITTER_PROBABILITY if (modality, name) == ("pose", "jitter") else probability
      applied = jax.random.uniform(gate_key) < p
      x = jnp.where(applied, functions[name](draw_key, x), x)
    return x

  def augment(key: jax.Array, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != _EXAMPLE_RANK[modality] + 1 or x.shape[-1] != _LAST_DIM[modality]:
      layout = "[B, T, 6]" if modality == "imu" else "[B, T, J, 3]"
      raise ValueError(f"{modality} augmenter expects {layout}, got {x.shape}")
    compute = jnp.promote_types(x.dtype, jnp.float32)
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(augment_one)(keys, x.astype(compute)).astype(x.dtype)

  return augment
