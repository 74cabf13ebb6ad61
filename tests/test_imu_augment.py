"""Tests for the sensor-realism IMU augmentation (mujo_jax.imu_augment)."""

import dataclasses

import ml_collections
import numpy as np
import pytest
from scipy import stats

from mujo_jax import imu_augment
from mujo_jax import units

Config = imu_augment.ImuAugmentConfig
G = units.STANDARD_GRAVITY


def basis_batch(b):
  """[b, 3, 6]: acc and gyro read e_x, e_y, e_z at t = 0, 1, 2, so R [:, :, t] = out[:, t]."""
  return np.tile(np.concatenate([np.eye(3), np.eye(3)], axis=1), (b, 1, 1))


def rotations_of(out):
  """(R seen by acc, R seen by gyro), each [B, 3, 3], from the augmented basis_batch."""
  return out[:, :, :3].transpose(0, 2, 1), out[:, :, 3:].transpose(0, 2, 1)


def angles(r):
  return np.arccos(np.clip((np.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1, 1))


def at_rest(b, t=100):
  imu = np.zeros((b, t, 6))
  imu[..., 2] = G
  return imu


def test_rotation_keeps_norms_and_uses_one_rotation_for_acc_and_gyro():
  rng = np.random.default_rng(0)
  imu = rng.normal(size=(64, 50, 6))
  for mode in ("small", "uniform"):
    out = imu_augment.apply(imu, np.random.default_rng(1), Config(rotation=mode))
    for triad in (slice(0, 3), slice(3, 6)):
      np.testing.assert_allclose(np.linalg.norm(out[..., triad], axis=-1),
                                 np.linalg.norm(imu[..., triad], axis=-1), rtol=1e-12)
    # Least-squares R (out = R x at every sample) from each triad alone: they agree.
    fit = lambda s: np.stack([np.linalg.lstsq(imu[k][:, s], out[k][:, s], rcond=None)[0].T
                              for k in range(len(imu))])
    r_acc, r_gyr = fit(slice(0, 3)), fit(slice(3, 6))
    np.testing.assert_allclose(r_acc, r_gyr, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(r_acc), 1, atol=1e-9)
    assert (angles(r_acc) > 1e-3).all()  # each example really turned


def test_uniform_rotations_are_haar_distributed():
  out = imu_augment.apply(basis_batch(20000), np.random.default_rng(2), Config(rotation="uniform"))
  r_acc, r_gyr = rotations_of(out)
  np.testing.assert_array_equal(r_acc, r_gyr)
  np.testing.assert_allclose(r_acc @ r_acc.transpose(0, 2, 1), np.broadcast_to(np.eye(3),
                                                                              r_acc.shape),
                             atol=1e-12)
  assert np.abs(r_acc.mean(axis=0)).max() < 0.02  # E[R] = 0 under Haar measure
  # Angle density (1 - cos t) / pi on [0, pi], i.e. CDF (t - sin t) / pi.
  test = stats.kstest(angles(r_acc), lambda t: (t - np.sin(t)) / np.pi)
  assert test.pvalue > 1e-3, test
  # "small" draws, which are not Haar, fail the same test.
  small = rotations_of(imu_augment.apply(basis_batch(20000), np.random.default_rng(2),
                                         Config(rotation="small", rotation_max_deg=180)))[0]
  assert stats.kstest(angles(small), lambda t: (t - np.sin(t)) / np.pi).pvalue < 1e-6


def test_small_rotations_stay_within_the_limit():
  for max_deg in (5.0, 30.0):
    out = imu_augment.apply(basis_batch(5000), np.random.default_rng(3),
                            Config(rotation="small", rotation_max_deg=max_deg))
    theta = np.rad2deg(angles(rotations_of(out)[0]))
    assert theta.max() <= max_deg + 1e-6
    assert theta.max() > 0.95 * max_deg  # and reach it
    # Axes spread over the whole sphere.
    r = rotations_of(out)[0]
    axis = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], -1)
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    assert np.abs(axis.mean(axis=0)).max() < 0.05


def test_sensor_at_rest_keeps_gravity_under_rotation_and_rate_jitter():
  for dtype in (np.float64, np.float32):
    imu = at_rest(256).astype(dtype)
    out = imu_augment.apply(imu, np.random.default_rng(4),
                            Config(rotation="uniform", rate_jitter=0.1))
    assert out.dtype == dtype
    np.testing.assert_allclose(np.linalg.norm(out[..., :3], axis=-1), G, rtol=1e-6)
    np.testing.assert_array_equal(out[..., 3:], 0)
    assert np.abs(out[:, 0, :3] - [0, 0, G]).max() > 1  # and really turned


def test_sensor_at_rest_gets_the_configured_bias_and_noise():
  imu = at_rest(400, t=500)
  biased = imu_augment.apply(imu, np.random.default_rng(5), Config(acc_bias=0.3, gyr_bias=0.02))
  offset = biased[:, 0] - imu[:, 0]  # [B, 6]
  np.testing.assert_allclose(biased - imu, np.broadcast_to(offset[:, None], imu.shape),
                             atol=1e-12)  # constant in time
  for triad, b in ((slice(0, 3), 0.3), (slice(3, 6), 0.02)):
    assert np.abs(offset[:, triad]).max() <= b
    assert np.abs(offset[:, triad]).max() > 0.95 * b
    assert stats.kstest(offset[:, triad].ravel() / b, stats.uniform(-1, 2).cdf).pvalue > 1e-3
  assert len(np.unique(offset[:, 0])) == len(offset)  # one draw per example

  noisy = imu_augment.apply(imu, np.random.default_rng(6),
                            Config(acc_noise_std=0.05, gyr_noise_std=0.01))
  noise = noisy - imu
  np.testing.assert_allclose(noise[..., :3].std(), 0.05, rtol=0.02)
  np.testing.assert_allclose(noise[..., 3:].std(), 0.01, rtol=0.02)
  np.testing.assert_allclose(noise.mean(axis=(0, 1)), 0, atol=0.003)
  assert stats.kstest(noise[..., 0].ravel() / 0.05, "norm").pvalue > 1e-3
  # White: no correlation between neighbouring samples, nor between channels.
  lag = np.mean(noise[:, 1:, 3] * noise[:, :-1, 3]) / noise[..., 3].var()
  assert abs(lag) < 0.02
  assert abs(np.corrcoef(noise[..., 0].ravel(), noise[..., 3].ravel())[0, 1]) < 0.02

  # Rate jitter acts before the noise, so the noise stays white at its std.
  jittered = imu_augment.apply(imu, np.random.default_rng(7),
                               Config(acc_noise_std=0.05, rate_jitter=0.2)) - imu
  np.testing.assert_allclose(jittered[..., 0].std(), 0.05, rtol=0.02)
  lag = np.mean(jittered[:, 1:, 0] * jittered[:, :-1, 0]) / jittered[..., 0].var()
  assert abs(lag) < 0.02

  gained = imu_augment.apply(imu, np.random.default_rng(7), Config(gain=0.1))
  scale = gained[:, 0, 2] / G
  assert 0.9 <= scale.min() and scale.max() <= 1.1 and np.ptp(scale) > 0.18
  np.testing.assert_array_equal(gained[..., :2], 0)


def test_rate_jitter_resamples_the_clock():
  t = np.arange(200) / 50.0  # 50 Hz
  wave = np.sin(2 * np.pi * 1.5 * t)
  imu = np.broadcast_to(wave[None, :, None], (3, 200, 6)).copy()
  np.testing.assert_array_equal(imu_augment.resample_time(imu, np.ones(3)), imu)
  factors = np.array([0.9, 1.0, 1.1])
  out = imu_augment.resample_time(imu, factors)
  for k, f in enumerate(factors):
    inside = f * np.arange(200) <= 199
    want = np.sin(2 * np.pi * 1.5 * f * t)
    np.testing.assert_allclose(out[k, inside, 0], want[inside], atol=0.01)  # linear interp.
    assert (out[k, ~inside] == imu[k, -1]).all()  # the end is held
  assert (~(1.1 * np.arange(200) <= 199)).sum() > 10

  # Through apply: each example's factor lies in [1 - r, 1 + r] and is its own.
  ramp = np.broadcast_to(np.arange(200.0)[None, :, None], (500, 200, 6))
  out = imu_augment.apply(ramp, np.random.default_rng(8), Config(rate_jitter=0.05))
  factor = out[:, 1, 0]  # sample 1 reads the input at time factor * 1
  np.testing.assert_allclose(out[:, :, 3], out[:, :, 0])  # acc and gyro alike
  assert 0.95 <= factor.min() and factor.max() <= 1.05 and np.ptp(factor) > 0.09
  np.testing.assert_allclose(out[:, 100, 0], 100 * factor, rtol=1e-12)


def test_all_off_returns_the_input_unchanged():
  imu = np.random.default_rng(9).normal(size=(4, 20, 6)).astype(np.float16)
  calls = []

  class Rng:
    def random(self, shape):
      calls.append(shape)
      return np.zeros(shape)

  assert not Config().enabled
  out = imu_augment.apply(imu, Rng(), Config())
  assert out is imu and not calls
  out = imu_augment.apply(imu, Rng(), Config(rotation="none", rotation_max_deg=10))
  assert out is imu and not calls


def test_absent_sensors_are_left_alone_and_draws_do_not_depend_on_them():
  imu = np.random.default_rng(10).normal(size=(6, 3, 20, 6)).astype(np.float16)
  present = np.ones((6, 3), bool)
  present[1, 2] = present[4, 0] = False
  config = Config(rotation="uniform", acc_noise_std=0.1, gain=0.1, rate_jitter=0.1)
  out = imu_augment.apply(imu, np.random.default_rng(11), config, present)
  full = imu_augment.apply(imu, np.random.default_rng(11), config)
  assert out.shape == imu.shape and out.dtype == np.float16
  np.testing.assert_array_equal(out[~present], imu[~present])
  np.testing.assert_array_equal(out[present], full[present])
  assert (out[present] != imu[present]).any(axis=(-2, -1)).all()
  with pytest.raises(ValueError, match=r"\[B, T, 6\] or \[B, S, T, 6\]"):
    imu_augment.apply(imu[..., :3], np.random.default_rng(0), config)


def test_from_dict_takes_a_config_dict_and_names_unknown_keys():
  d = ml_collections.ConfigDict(dict(rotation="small", rotation_max_deg=20, gain=0.05))
  config = Config.from_dict(d)
  assert config == Config(rotation="small", rotation_max_deg=20.0, gain=0.05)
  assert Config.from_dict({}) == Config()
  with pytest.raises(ValueError, match=r"\['acc_nosie_std'\].*valid keys.*acc_noise_std"):
    Config.from_dict(dict(acc_nosie_std=0.1, gain=0.1))
  with pytest.raises(ValueError, match="rotation 'random' is not one of"):
    Config(rotation="random")
  for bad in (dict(rate_jitter=1.0), dict(gain=-0.1), dict(rotation_max_deg=0),
              dict(acc_bias=float("nan")), dict(gyr_noise_std="0.1")):
    with pytest.raises(ValueError, match=next(iter(bad))):
      Config(**bad)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.gain = 0.0
