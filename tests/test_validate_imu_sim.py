"""Simulator validation against UTD-MHAD: the comparison on synthetic signals, and floors on a
real subset (subjects 1 and 2) that the full run's results (README.md) clear with a margin.
"""

import os

import numpy as np
import pytest

from data_prep import validate_imu_sim as vis
from mujo_jax.sources import utd_mhad

UTD_MHAD = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "utd_mhad")
needs_data = pytest.mark.skipif(not os.path.isdir(UTD_MHAD),
                                reason=f"UTD-MHAD not found at {UTD_MHAD}")


def readings(acc_mag: np.ndarray, gyr_mag: np.ndarray) -> np.ndarray:
  """[T, 6] readings whose |acc| and |gyr| are the given [T] signals, spread over the axes."""
  acc = np.stack([acc_mag, np.zeros_like(acc_mag), np.zeros_like(acc_mag)], axis=1)
  gyr = np.stack([gyr_mag, gyr_mag, gyr_mag], axis=1) / np.sqrt(3)
  return np.concatenate([acc, gyr], axis=1)


def smooth_noise(rng, n, width=5):
  """Positive band-limited random signal [n], like a magnitude."""
  x = np.convolve(rng.normal(size=n + 4 * width), np.hanning(4 * width), mode="same")
  return 10.0 + x[2 * width: 2 * width + n]


def test_compare_identical_signals():
  rng = np.random.default_rng(0)
  sig = readings(smooth_noise(rng, 300), np.abs(smooth_noise(rng, 300)))
  out = vis.compare(sig, sig, rate_hz=50.0, max_lag_s=0.3)
  assert out["acc_r"] == pytest.approx(1.0) and out["gyr_r"] == pytest.approx(1.0)
  assert out["lag_s"] == 0.0 and out["n"] == 300 - 15


@pytest.mark.parametrize("delay", [-9, -1, 4, 12])
def test_compare_recovers_a_known_lag(delay):
  rng = np.random.default_rng(1)
  acc, gyr = smooth_noise(rng, 400), smooth_noise(rng, 400)
  sim = readings(acc[20:320], gyr[20:320])
  real = readings(acc[20 - delay:320 - delay], gyr[20 - delay:320 - delay])  # real lags by delay
  out = vis.compare(sim, real, rate_hz=50.0, max_lag_s=0.3)
  assert out["lag_s"] == pytest.approx(delay / 50.0)
  assert out["acc_r"] == pytest.approx(1.0) and out["gyr_r"] == pytest.approx(1.0)


def test_compare_independent_noise_is_uncorrelated():
  rng = np.random.default_rng(2)
  sim = readings(10 + rng.normal(size=5000), 1 + np.abs(rng.normal(size=5000)))
  real = readings(10 + rng.normal(size=5000), 1 + np.abs(rng.normal(size=5000)))
  out = vis.compare(sim, real, rate_hz=50.0, max_lag_s=0.3)
  # The best of 31 lags of independent noise: |r| ~ a few / sqrt(5000).
  assert abs(out["acc_r"]) < 0.08 and abs(out["gyr_r"]) < 0.08


def test_compare_rejects_bad_input():
  with pytest.raises(ValueError, match=r"\[T, 6\]"):
    vis.compare(np.zeros((100, 3)), np.zeros((100, 6)))
  with pytest.raises(ValueError, match="too short"):
    vis.compare(np.ones((16, 6)), np.ones((100, 6)), max_lag_s=0.3)


def test_ranks_and_mispairing():
  scores = np.array([[0.9, 0.1, 0.5], [0.7, 0.6, 0.6], [0.2, 0.3, 0.1]])
  # Own = diagonal; ties count against (row 1: 0.6 tied with column 2).
  np.testing.assert_array_equal(vis.ranks(scores, np.arange(3)), [0, 2, 2])
  trials = [utd_mhad.Trial(a, s, t, "", "") for s in (1, 2) for a in (1, 2, 3) for t in (1, 2)]
  partner = vis.mispairing(trials, seed=0)
  for i, j in enumerate(partner):
    assert trials[j].subject == trials[i].subject and trials[j].action != trials[i].action
  np.testing.assert_array_equal(partner, vis.mispairing(trials, seed=0))
  assert not np.array_equal(partner, vis.mispairing(trials, seed=1))


@needs_data
def test_simulate_trial_matches_inertial_timeline():
  trial = next(t for t in utd_mhad.list_trials(UTD_MHAD) if t.name == "a1_s1_t1")
  n_inertial = len(utd_mhad.load_inertial(trial))
  sim = vis.simulate_trial(trial)
  assert sim.dtype == np.float64 and sim.shape[1] == 6
  assert n_inertial - 3 <= len(sim) <= n_inertial
  # Standing still at the start: the wrist reads gravity.
  assert np.linalg.norm(sim[:5, :3], axis=1) == pytest.approx(9.81, rel=0.1)
  # Nominal 30 Hz: the same frames take only ~19/30 of the time.
  nominal = vis.simulate_trial(trial, "nominal_30hz")
  assert 0.5 < len(nominal) / len(sim) < 0.75
  with pytest.raises(ValueError, match="unknown alignment"):
    vis.simulate_trial(trial, "25hz")


@pytest.fixture(scope="module")
def subset_result():
  trials = [t for t in utd_mhad.list_trials(UTD_MHAD) if t.subject in (1, 2)]
  return vis.validate(UTD_MHAD, trials, workers=2, log=lambda msg: None)


@needs_data
def test_subset_agreement_and_identification_floors(subset_result):
  """Subjects 1-2: floors a little below what the simulator reaches (module docstring)."""
  r = subset_result
  assert r["n_trials"] == 215 and not r["failed"]
  overall = r["overall"]
  assert overall["acc_r"] > 0.58 and overall["gyr_r"] > 0.70
  assert overall["top1_acc"] > 0.18 and overall["top5_acc"] > 0.42
  assert overall["top1_combined"] > 0.30 and overall["top5_combined"] > 0.70
  assert abs(overall["lag_s"]) <= 0.1
  assert set(r["per_action"]) == {str(a) for a in range(1, 28)}
  assert r["chance"]["top1"] == pytest.approx(1 / 108, rel=0.02)


@needs_data
def test_subset_controls_are_far_worse(subset_result):
  overall, controls = subset_result["overall"], subset_result["controls"]
  for name in ("mispaired", "nominal_30hz"):
    c = controls[name]["overall"]
    assert overall["acc_r"] - c["acc_r"] > 0.2, name
    assert overall["gyr_r"] - c["gyr_r"] > 0.3, name
    assert c["top5_acc"] < 0.15 and c["top5_combined"] < 0.15, name
  rows = subset_result["per_trial"]["mispaired"]
  assert all(row["real"] != row["trial"] and row["real"].split("_")[1:2]
             == row["trial"].split("_")[1:2] for row in rows)


@needs_data
def test_subset_is_deterministic():
  trials = [t for t in utd_mhad.list_trials(UTD_MHAD) if t.subject == 1 and t.action <= 6]
  a = vis.validate(UTD_MHAD, trials, workers=1, log=lambda msg: None)
  b = vis.validate(UTD_MHAD, trials[::-1], workers=2, log=lambda msg: None)
  a.pop("runtime_s"), b.pop("runtime_s")
  assert a == b
