"""Sensor-realism augmentation of IMU windows: make virtual IMU read like a real wearable.

Pretraining IMU is mostly simulated from pose (mujo_jax.sim.virtual_imu): a perfect sensor,
rigidly aligned with its segment, sampled by an exact clock. A real watch or phone is turned
on its strap, has per-axis scale errors, offsets and white noise, and its clock runs a little
fast or slow. `apply` draws these per example, in numpy, vectorised over the batch, on
[B, T, 6] (one location per example) or [B, S, T, 6] (every location: each sensor draws its
own) windows: acc_x..z (m/s^2, gravity included) and gyr_x..z (rad/s), each in the sensor's
own frame.

Applied in this order, as a physical sensor produces its reading:
1. rotation: the sensor's axes turned against the segment, one R [3, 3] per sensor, the same
   for acc and gyro (both triads sit in one package). It comes first because gain, bias and
   noise belong to the turned sensor's own axes. "uniform" is Haar-uniform over SO(3) as in
   UniMTS's rotation-invariant augmentation (Zhang et al., NeurIPS 2024: a random unit
   quaternion per sample and joint, applied to acc and gyro alike).
2. rate jitter: the device clock runs at a factor f in [1 - r, 1 + r] of nominal, so sample
   t holds the true signal at time f * t (linear interpolation, same length, the last
   sample held where f * t runs past the end). It acts on the clean signal, before noise, so
   that the noise stays white (interpolating noise would colour it and lower its variance).
   Being linear and constant per sensor, it commutes with the rotation.
3. gain: per-channel scale factor 1 + U(-g, g).
4. bias: per-channel constant offset U(-b, b), b per triad.
5. noise: white Gaussian noise, std per triad, independent per sample and channel.

A sensor at rest keeps |acc| = 9.80665 m/s^2 through steps 1-2; steps 3-5 are the sensor
errors themselves. Placement along the segment cannot be changed here (it needs the pose): it
is chosen when data are converted, via virtual_imu's `placement` argument.

Randomness: only `rng.random(shape)` with shape[0] = B, one row per example, a fixed
sequence of calls for a given config (numpy's Generator or input_pipeline.PositionalRandom,
which makes each example's draws depend on its stream position alone, so batches do not
depend on process or worker count, and resume exactly). Unlike mujo_jax.augment (CMC-CMKM's
augmentations, in JAX inside the step), this runs in the input pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any
from typing import Protocol

import numpy as np

ROTATIONS = ("none", "small", "uniform")


class UniformSource(Protocol):
  """What `apply` needs from an rng: uniform [0, 1) draws, shape[0] = the batch."""

  def random(self, shape: tuple[int, ...]) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class ImuAugmentConfig:
  """What `apply` does; all off by default (then `apply` returns its input unchanged).

  rotation: "none"; "small": uniform axis, angle uniform in [0, rotation_max_deg] (a strap
    turned a little); "uniform": Haar-uniform over SO(3) (any mounting).
  rotation_max_deg: the largest angle of "small", degrees, in (0, 180].
  acc_noise_std, gyr_noise_std: white Gaussian noise std, m/s^2 and rad/s.
  acc_bias, gyr_bias: constant offset per example and channel, uniform in [-b, b].
  gain: scale factor per example and channel, 1 + uniform(-gain, gain); in [0, 1).
  rate_jitter: clock factor uniform in [1 - r, 1 + r]; in [0, 1).
  """
  rotation: str = "none"
  rotation_max_deg: float = 30.0
  acc_noise_std: float = 0.0
  gyr_noise_std: float = 0.0
  acc_bias: float = 0.0
  gyr_bias: float = 0.0
  gain: float = 0.0
  rate_jitter: float = 0.0

  def __post_init__(self):
    if self.rotation not in ROTATIONS:
      raise ValueError(f"imu_augment.rotation {self.rotation!r} is not one of {ROTATIONS}")
    for field in dataclasses.fields(self):
      if field.name == "rotation":
        continue
      value = getattr(self, field.name)
      if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"imu_augment.{field.name} {value!r} is not a number")
      value = float(value)
      if not math.isfinite(value) or value < 0:
        raise ValueError(f"imu_augment.{field.name} {value} must be finite and >= 0")
      object.__setattr__(self, field.name, value)
    if not 0 < self.rotation_max_deg <= 180:
      raise ValueError(f"imu_augment.rotation_max_deg {self.rotation_max_deg} is outside (0, 180]")
    for name in ("gain", "rate_jitter"):
      if getattr(self, name) >= 1:
        raise ValueError(f"imu_augment.{name} {getattr(self, name)} must be < 1")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ImuAugmentConfig":
    """From a dict or ml_collections.ConfigDict (config.data.imu_augment); unknown keys fail."""
    if hasattr(d, "to_dict"):
      d = d.to_dict()
    d = dict(d)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
      raise ValueError(f"unknown imu_augment keys {unknown}; valid keys: {valid}")
    return cls(**d)

  @property
  def enabled(self) -> bool:
    return self.rotation != "none" or any(
        getattr(self, name) > 0 for name in ("acc_noise_std", "gyr_noise_std", "acc_bias",
                                             "gyr_bias", "gain", "rate_jitter"))


def apply(imu: np.ndarray, rng: UniformSource, config: ImuAugmentConfig,
          present: np.ndarray | None = None) -> np.ndarray:
  """[B, ..., T, 6] IMU -> the same shape and dtype, augmented as `config` says.

  present: bool, broadcastable to imu.shape[:-2] ([B] or [B, S]); sensors where it is False
  (absent, zero-filled) come back unchanged. Every row draws whether present or not, so an
  example's draws never depend on the others. With everything off, `imu` itself is returned.
  Computed in at least float32, returned in imu's dtype: in float16 batches noise far below
  the float16 step of the signal (about 0.008 m/s^2 near 1 g) is partly rounded away.
  """
  imu = np.asarray(imu)
  if imu.ndim < 3 or imu.shape[-1] != 6:
    raise ValueError(f"imu of shape {imu.shape}: expected [B, T, 6] or [B, S, T, 6]")
  if not config.enabled:
    return imu
  lead, steps = imu.shape[:-2], imu.shape[-2]
  x = imu.astype(np.result_type(imu.dtype, np.float32))
  if config.rotation != "none":
    x = rotate(x, random_rotations(rng.random(lead + (3,)), config.rotation,
                                   config.rotation_max_deg))
  if config.rate_jitter > 0:
    factor = 1.0 + config.rate_jitter * (2.0 * rng.random(lead + (1,))[..., 0] - 1.0)
    x = resample_time(x, factor)
  if config.gain > 0:
    x = x * (1.0 + config.gain * (2.0 * rng.random(lead + (6,)) - 1.0))[..., None, :]
  if config.acc_bias > 0 or config.gyr_bias > 0:
    scale = np.repeat([config.acc_bias, config.gyr_bias], 3)
    x = x + (scale * (2.0 * rng.random(lead + (6,)) - 1.0))[..., None, :]
  if config.acc_noise_std > 0 or config.gyr_noise_std > 0:
    std = np.repeat([config.acc_noise_std, config.gyr_noise_std], 3)
    x = x + std * standard_normal(rng.random(lead + (steps, 3, 2)))
  x = x.astype(imu.dtype)
  if present is not None:
    keep = np.broadcast_to(np.asarray(present, bool), lead)
    x = np.where(keep[..., None, None], x, imu)
  return x


def random_rotations(u: np.ndarray, mode: str, max_deg: float = 180.0) -> np.ndarray:
  """[..., 3] uniforms in [0, 1) -> [..., 3, 3] rotations.

  "uniform": Shoemake's uniform unit quaternion, i.e. Haar measure on SO(3). "small": axis
  uniform on the sphere, angle uniform in [0, max_deg].
  """
  u = np.asarray(u, np.float64)
  if mode == "uniform":
    a, b = np.sqrt(1.0 - u[..., 0]), np.sqrt(u[..., 0])
    t1, t2 = 2 * np.pi * u[..., 1], 2 * np.pi * u[..., 2]
    q = np.stack([b * np.cos(t2), a * np.sin(t1), a * np.cos(t1), b * np.sin(t2)], axis=-1)
  elif mode == "small":
    z = 2.0 * u[..., 0] - 1.0
    phi = 2 * np.pi * u[..., 1]
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    axis = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)
    half = np.deg2rad(max_deg) * u[..., 2] / 2
    q = np.concatenate([np.cos(half)[..., None], np.sin(half)[..., None] * axis], axis=-1)
  else:
    raise ValueError(f"rotation mode {mode!r} is not one of {ROTATIONS[1:]}")
  return quaternion_to_matrix(q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
  """[..., 4] unit quaternions (w, x, y, z) -> [..., 3, 3] rotation matrices."""
  w, x, y, z = np.moveaxis(np.asarray(q), -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], axis=-2)


def rotate(imu: np.ndarray, rotations: np.ndarray) -> np.ndarray:
  """[..., T, 6] readings and [..., 3, 3] R -> R applied to acc and to gyro at every sample."""
  r = np.asarray(rotations, imu.dtype)
  acc = np.einsum("...ij,...tj->...ti", r, imu[..., :3])
  gyr = np.einsum("...ij,...tj->...ti", r, imu[..., 3:])
  return np.concatenate([acc, gyr], axis=-1)


def resample_time(imu: np.ndarray, factor: np.ndarray) -> np.ndarray:
  """[..., T, C] and a clock factor per sensor [...] -> sample t = the input at time factor * t.

  Linear interpolation on the time axis, same length; past the last input sample the last
  one is held (no wrap-around). factor 1 returns the input exactly.
  """
  steps = imu.shape[-2]
  factor = np.broadcast_to(np.asarray(factor, np.float64), imu.shape[:-2])
  where = np.minimum(factor[..., None] * np.arange(steps), steps - 1)  # [..., T]
  lo = np.floor(where).astype(np.intp)
  hi = np.minimum(lo + 1, steps - 1)
  frac = (where - lo).astype(imu.dtype)[..., None]
  x0 = np.take_along_axis(imu, lo[..., None], axis=-2)
  x1 = np.take_along_axis(imu, hi[..., None], axis=-2)
  return x0 + frac * (x1 - x0)


def standard_normal(u: np.ndarray) -> np.ndarray:
  """[..., 3, 2] uniforms in [0, 1) -> [..., 6] independent N(0, 1) (Box-Muller: cos, sin)."""
  radius = np.sqrt(-2.0 * np.log1p(-u[..., 0]))
  angle = 2 * np.pi * u[..., 1]
  return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
