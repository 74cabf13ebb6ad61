"""Tests for CMC-CMKM's skeleton preprocessing and augmentations (mujo_jax.augment)."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from mujo_jax import augment
from mujo_jax import units

T, J = 50, 20


def imu_batch(b, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, T, 6)), jnp.float32)


def pose_batch(b, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, T, J, 3)), jnp.float32)


@functools.cache
def only(modality, name, probability=1.0):
  """Jitted augmenter that applies just `name` (always, by default); cached across tests."""
  return jax.jit(augment.make_augmenter(modality, [name], probability))


def binomial_ok(count, n, p, sigmas=5.0):
  return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_unknown_names_and_modality_raise_with_the_known_ones():
  with pytest.raises(ValueError, match="channel_shuffle"):
    augment.make_augmenter("imu", ["jitter", "rotation"])
  with pytest.raises(ValueError, match="shear"):
    augment.make_augmenter("pose", ["permutation"])
  with pytest.raises(ValueError, match="imu"):
    augment.make_augmenter("video", [])
  with pytest.raises(ValueError, match=r"\[B, T, J, 3\]"):
    augment.make_augmenter("pose", ["jitter"])(jax.random.key(0), imu_batch(2))


def test_imu_si_to_g_deg_s():
  x = jnp.array([[units.STANDARD_GRAVITY, -units.STANDARD_GRAVITY, 0.0, math.pi, 0.0,
                  -math.pi / 2]])
  np.testing.assert_allclose(augment.imu_si_to_g_deg_s(x), [[1, -1, 0, 180, 0, -90]],
                             rtol=1e-6)


def test_normalise_skeleton_is_per_sequence_from_the_first_frame():
  x = pose_batch(3) * 0.3 + jnp.arange(T)[None, :, None, None] * 0.1
  y = augment.normalise_skeleton(x)
  np.testing.assert_allclose(y[:, 0, 2], 0.0, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(y[:, 0, 1] - y[:, 0, 2], axis=-1), 1.0, rtol=1e-5)
  # Later frames keep their motion relative to frame 0 (one offset and scale per sequence).
  d = jnp.linalg.norm(x[:, 0, 1] - x[:, 0, 2], axis=-1)
  np.testing.assert_allclose(y, (x - x[:, :1, 2:3]) / d[:, None, None, None], rtol=1e-5,
                             atol=1e-6)
  assert float(jnp.abs(y[:, 10, 2]).max()) > 0.1
  # A degenerate (all-zero) example stays finite.
  assert bool(jnp.isfinite(augment.normalise_skeleton(jnp.zeros((1, T, J, 3)))).all())


def test_imu_jitter_adds_unit_noise_per_element():
  x = imu_batch(200)
  noise = np.asarray(only("imu", "jitter")(jax.random.key(1), x) - x).reshape(-1)
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - augment.IMU_JITTER_SIGMA) < 0.02
  assert abs(np.corrcoef(noise[:-1], noise[1:])[0, 1]) < 0.03


def test_imu_scaling_draws_one_normal_factor_per_element():
  factors = np.asarray(only("imu", "scaling")(jax.random.key(2), jnp.ones((200, T, 6))))
  assert abs(factors.mean() - 1.0) < 0.02
  assert abs(factors.std() - augment.IMU_SCALING_SIGMA) < 0.02
  # Factors vary along time within a channel, as the reference's size=x.shape draw.
  assert abs(factors.std(axis=1).mean() - augment.IMU_SCALING_SIGMA) < 0.05


def test_imu_permutation_swaps_acc_and_gyro_blocks():
  b = 4000
  x = jnp.broadcast_to(jnp.arange(6.0) + 10 * jnp.arange(T)[:, None], (b, T, 6))
  y = np.asarray(only("imu", "permutation")(jax.random.key(3), x))
  kept = (y == np.asarray(x)).all(axis=(1, 2))
  swapped = (y == np.asarray(x)[:, :, [3, 4, 5, 0, 1, 2]]).all(axis=(1, 2))
  assert (kept | swapped).all()
  # 2 segments with probability 1/2, then a swap with probability 1/2.
  assert binomial_ok(swapped.sum(), b, 0.25)


@pytest.mark.parametrize("length,max_segments", [(50, 6), (6, 3), (7, 4)])
def test_permute_segments_reorders_array_split_segments(length, max_segments):
  fn = jax.jit(jax.vmap(lambda k, v: augment._permute_segments(k, v, 0, max_segments)))
  n = 2000
  out = np.asarray(fn(jax.random.split(jax.random.key(4), n),
                      jnp.broadcast_to(jnp.arange(length), (n, length))))
  # Every output is some order of np.array_split(steps, k) with k < max_segments.
  valid = set()
  for k in range(1, max_segments):
    for order in itertools.permutations(np.array_split(np.arange(length), k)):
      valid.add(tuple(np.concatenate(order)))
  rows = [tuple(r) for r in out]
  assert set(rows) <= valid
  runs = [len(np.split(r, np.flatnonzero(np.diff(r) != 1) + 1)) for r in out]
  assert max(runs) == max_segments - 1
  # k is uniform on 1 .. max_segments - 1 and the order uniform: P(identity) = mean(1 / k!).
  p_identity = np.mean([1 / math.factorial(k) for k in range(1, max_segments)])
  assert binomial_ok(sum(r == tuple(range(length)) for r in rows), n, p_identity)


def test_imu_channel_shuffle_permutes_time_steps():
  b = 64
  x = jnp.broadcast_to(jnp.arange(T * 6.0).reshape(T, 6), (b, T, 6))
  y = np.asarray(only("imu", "channel_shuffle")(jax.random.key(5), x))
  order = y[:, :, 0] / 6
  np.testing.assert_array_equal(y, order[:, :, None] * 6 + np.arange(6))
  np.testing.assert_array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(T), (b, T)))
  assert len({tuple(o) for o in order}) == b


def test_pose_jitter_is_always_applied_with_sigma():
  x = pose_batch(40)
  noise = np.asarray(augment.make_augmenter("pose", ["jitter"], 0.0)(jax.random.key(6), x) - x)
  assert (np.abs(noise).reshape(40, -1).max(axis=1) > 0).all()
  assert abs(noise.std() - augment.POSE_JITTER_SIGMA) < 0.002 and abs(noise.mean()) < 0.002


def _fit_linear(x, y, center):
  """Per example the 3x3 M with y - c = (x - c) @ M.T by least squares, c per frame."""
  xs = np.asarray(x, np.float64) - center
  ys = np.asarray(y, np.float64) - center
  return np.stack([np.linalg.lstsq(a.reshape(-1, 3), b.reshape(-1, 3), rcond=None)[0].T
                   for a, b in zip(xs, ys)])


def _rotation(deg):
  ax, ay, az = np.radians(deg)
  rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
  ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
  rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
  return rx @ ry @ rz


def test_pose_rotation_is_rigid_about_joint_0_by_allowed_angles():
  b = 300
  x = pose_batch(b)
  y = only("pose", "rotation")(jax.random.key(7), x)
  c = np.asarray(x)[:, :, :1]
  np.testing.assert_allclose(y[:, :, 0], x[:, :, 0], atol=1e-5)
  pair = lambda p: jnp.linalg.norm(p[:, :, :, None] - p[:, :, None, :], axis=-1)
  np.testing.assert_allclose(pair(y), pair(x), atol=1e-4)
  r = _fit_linear(x, y, c)
  allowed = np.asarray(augment.POSE_ROTATION_DEGREES, np.float64)
  angles = []
  for m in r:
    deg = np.degrees([np.arctan2(-m[1, 2], m[2, 2]), np.arcsin(m[0, 2]),
                      np.arctan2(-m[0, 1], m[0, 0])])
    snapped = allowed[np.abs(deg[:, None] - allowed[None]).argmin(axis=1)]
    np.testing.assert_allclose(deg, snapped, atol=1e-3)
    np.testing.assert_allclose(m, _rotation(snapped), atol=1e-5)
    angles.append(snapped)
  angles = np.array(angles)
  for axis in range(3):
    assert set(angles[:, axis]) == set(allowed)


def test_pose_scaling_is_diagonal_about_joint_0():
  b = 400
  x = pose_batch(b)
  y = only("pose", "scaling")(jax.random.key(8), x)
  m = _fit_linear(x, y, np.asarray(x)[:, :, :1])
  factors = np.diagonal(m, axis1=1, axis2=2)
  np.testing.assert_allclose(m - np.stack([np.diag(f) for f in factors]), 0, atol=1e-5)
  lo, hi = augment.POSE_SCALING_RANGE
  assert factors.min() >= lo - 1e-6 and factors.max() <= hi + 1e-6
  assert abs(factors.mean() - (lo + hi) / 2) < 0.02
  assert abs(factors.std() - (hi - lo) / math.sqrt(12)) < 0.02


def test_pose_shear_matches_its_matrix():
  b = 400
  x = pose_batch(b)
  y = only("pose", "shear")(jax.random.key(9), x)
  m = _fit_linear(x, y, 0.0)
  np.testing.assert_allclose(np.diagonal(m, axis1=1, axis2=2), 1.0, atol=1e-5)
  np.testing.assert_allclose(m[:, 0, 1], m[:, 0, 2], atol=1e-5)
  np.testing.assert_allclose(m[:, 1, 0], m[:, 1, 2], atol=1e-5)
  np.testing.assert_allclose(m[:, 2, 0], m[:, 2, 1], atol=1e-5)
  factors = np.stack([m[:, 0, 1], m[:, 1, 0], m[:, 2, 0]], axis=1)
  assert abs(factors.std() - augment.POSE_SHEAR_BETA) < 0.015 and abs(factors.mean()) < 0.02


def test_pose_crop_and_resize_is_scipy_resample_of_an_allowed_crop():
  b = 200
  x = pose_batch(b)[:, :, :2]
  y = np.asarray(only("pose", "crop_and_resize")(jax.random.key(10), x))
  assert y.shape == x.shape
  xs = np.asarray(x, np.float64)
  lo, hi = (math.floor(f * T) for f in augment.POSE_CROP_FRACTION)
  lengths = []
  for xi, yi in zip(xs, y):
    best = min((np.abs(signal.resample(xi[s:s + n], T, axis=0) - yi).max(), n, s)
               for n in range(lo, hi + 1) for s in range(T - n + 1))
    assert best[0] < 1e-4
    lengths.append(best[1])
  # floor(U(0.8, 0.9) * 50) is uniform on 40..44.
  assert set(lengths) == set(range(lo, hi))


def test_supervised_pose_parameters_crop_rotate_and_jitter_as_the_reference_run():
  """POSE_SUPERVISED_PARAMS: crops of floor(U(0.7, 1) * 50) = 35..49 frames, rotations by
  whole degrees in -5..5, jitter sigma 0.01 (each transform always applied)."""
  sup = augment.POSE_SUPERVISED_PARAMS
  b = 150
  x = pose_batch(b)[:, :, :2]
  crop = jax.jit(augment.make_augmenter("pose", ["crop_and_resize"], 1.0, sup))
  y = np.asarray(crop(jax.random.key(13), x))
  xs = np.asarray(x, np.float64)
  lengths = [min((np.abs(signal.resample(xi[s:s + n], T, axis=0) - yi).max(), n)
                 for n in range(30, T + 1) for s in range(T - n + 1)) for xi, yi in zip(xs, y)]
  assert max(err for err, _ in lengths) < 1e-4
  assert {n for _, n in lengths} == set(range(35, 50))
  x = pose_batch(300)
  rot = jax.jit(augment.make_augmenter("pose", ["rotation"], 1.0, sup))
  r = _fit_linear(x, rot(jax.random.key(14), x), np.asarray(x)[:, :, :1])
  deg = np.degrees(np.stack([np.arctan2(-r[:, 1, 2], r[:, 2, 2]), np.arcsin(r[:, 0, 2]),
                             np.arctan2(-r[:, 0, 1], r[:, 0, 0])], axis=1))
  np.testing.assert_allclose(deg, np.round(deg), atol=1e-3)
  assert set(np.round(deg).ravel().astype(int)) == set(range(-5, 6))
  jitter = augment.make_augmenter("pose", ["jitter"], 0.0, sup)
  noise = np.asarray(jitter(jax.random.key(15), x) - x)
  assert abs(noise.std() - 0.01) < 2e-4
  with pytest.raises(ValueError, match="unknown pose augmentation parameter.*'jitter'"):
    augment.make_augmenter("pose", ["jitter"], params={"jitter": 0.1})
  with pytest.raises(ValueError, match="imu augmentations take no parameters"):
    augment.make_augmenter("imu", ["jitter"], params={"jitter_sigma": 0.1})


def test_crop_and_resize_keeps_a_constant_and_matches_scipy():
  x = jnp.asarray(np.random.default_rng(11).normal(size=(T, 3)), jnp.float32)
  for n, s in [(40, 0), (44, 6), (42, 3)]:
    got = augment._crop_and_resize(x, jnp.int32(s), jnp.int32(n))
    want = signal.resample(np.asarray(x, np.float64)[s:s + n], T, axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
  ones = augment._crop_and_resize(jnp.ones((T, 3)), jnp.int32(5), jnp.int32(41))
  np.testing.assert_allclose(ones, 1.0, atol=1e-5)


@pytest.mark.parametrize("modality,name,changes", [
    ("imu", "jitter", 1.0), ("imu", "scaling", 1.0), ("imu", "permutation", 0.25),
    ("imu", "channel_shuffle", 1.0), ("pose", "crop_and_resize", 1.0),
    ("pose", "scaling", 1.0), ("pose", "rotation", 1.0), ("pose", "shear", 1.0)])
def test_each_augmentation_applies_with_probability(modality, name, changes):
  b = 2000
  if modality == "imu":
    x = jnp.broadcast_to(jnp.arange(T * 6.0).reshape(T, 6) + 1, (b, T, 6))
  else:
    x = jnp.broadcast_to(pose_batch(1), (b, T, J, 3))
  y = only(modality, name, 0.75)(jax.random.key(12), x)
  changed = int((jnp.abs(y - x).reshape(b, -1).max(axis=1) > 1e-6).sum())
  assert binomial_ok(changed, b, 0.75 * changes)


def test_probability_zero_is_identity_except_pose_jitter():
  x = imu_batch(8)
  imu_none = jax.jit(augment.make_augmenter("imu", augment.IMU_AUGMENTATIONS, 0.0))
  np.testing.assert_array_equal(imu_none(jax.random.key(0), x), x)
  p = pose_batch(8)
  all_pose = jax.jit(augment.make_augmenter("pose", augment.POSE_AUGMENTATIONS, 0.0))
  jitter = jax.jit(augment.make_augmenter("pose", ["jitter"], 0.0))
  np.testing.assert_allclose(all_pose(jax.random.key(0), p), jitter(jax.random.key(0), p))


@pytest.mark.parametrize("modality", ["imu", "pose"])
def test_keys_jit_shapes_and_dtypes(modality):
  names = augment.IMU_AUGMENTATIONS if modality == "imu" else augment.POSE_AUGMENTATIONS
  fn = augment.make_augmenter(modality, names)
  jitted = jax.jit(fn)
  x = imu_batch(16) if modality == "imu" else pose_batch(16)
  a = jitted(jax.random.key(0), x)
  np.testing.assert_array_equal(a, jitted(jax.random.key(0), x))
  assert not np.allclose(a, jitted(jax.random.key(1), x))
  np.testing.assert_allclose(fn(jax.random.key(0), x), a, rtol=1e-5, atol=1e-5)
  # Each example draws its own augmentation.
  same = jitted(jax.random.key(0), jnp.broadcast_to(x[:1], x.shape))
  assert not np.allclose(same[0], same[1])
  assert a.shape == x.shape and a.dtype == x.dtype


@pytest.mark.parametrize("modality,name", [("imu", "scaling"), ("pose", "rotation")])
def test_low_precision_dtype_is_kept(modality, name):
  x = (imu_batch(4) if modality == "imu" else pose_batch(4)).astype(jnp.bfloat16)
  out = only(modality, name)(jax.random.key(2), x)
  assert out.shape == x.shape and out.dtype == jnp.bfloat16
