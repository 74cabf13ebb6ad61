"""Procedural exercise motion: valid kinematics, plausible postures, separable classes."""

import dataclasses

import numpy as np
import pytest

from mujo_jax.sim import motion
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu

H36M = skeletons.get_skeleton("h36m17")
J = {name: i for i, name in enumerate(H36M.joint_names)}
BODY = motion.BodyParams.from_height(1.75)
PLANTED = ("squats", "dumbbell_shoulder_press", "dumbbell_rows", "tricep_extensions",
           "dumbbell_biceps_curls", "lateral_shoulder_raises")


def clip(exercise, seed=0, seconds=8.0, **kwargs):
  return motion.synthesize(exercise, seconds, 50.0, np.random.default_rng(seed), **kwargs)


def trunk_elevation(pos: np.ndarray) -> np.ndarray:
  """[T] angle in degrees of pelvis -> thorax above the horizontal plane."""
  v = pos[:, J["thorax"]] - pos[:, J["pelvis"]]
  return np.degrees(np.arctan2(v[:, 2], np.linalg.norm(v[:, :2], axis=-1)))


@pytest.mark.parametrize("exercise", motion.EXERCISES)
def test_clip_shape_and_determinism(exercise):
  a = clip(exercise, seed=1, seconds=4.0)
  assert a.shape == (200, 17, 3) and np.isfinite(a).all()
  np.testing.assert_array_equal(a, clip(exercise, seed=1, seconds=4.0))
  assert np.abs(a - clip(exercise, seed=2, seconds=4.0)).mean() > 0.05


@pytest.mark.parametrize("exercise", motion.EXERCISES)
def test_bones_keep_their_length(exercise):
  exact = clip(exercise, joint_noise_m=0.0, body=BODY)
  noisy = clip(exercise, body=BODY)
  for parent, child in H36M.bones:
    exact_len = np.linalg.norm(exact[:, child] - exact[:, parent], axis=-1)
    noisy_len = np.linalg.norm(noisy[:, child] - noisy[:, parent], axis=-1)
    assert exact_len.std() < 1e-9, H36M.joint_names[child]
    assert noisy_len.std() < 0.01, H36M.joint_names[child]
  forearm = np.linalg.norm(exact[:, J["left_wrist"]] - exact[:, J["left_elbow"]], axis=-1)
  np.testing.assert_allclose(forearm, BODY.forearm)


@pytest.mark.parametrize("exercise", PLANTED)
def test_feet_stay_flat_on_the_floor(exercise):
  pos = clip(exercise, body=BODY, joint_noise_m=0.0)
  ankles = pos[:, [J["left_ankle"], J["right_ankle"]]]
  np.testing.assert_allclose(ankles[..., 2], BODY.ankle_height, atol=0.01)
  assert np.ptp(ankles[..., :2], axis=0).max() < 0.01  # planted, not sliding


@pytest.mark.parametrize("exercise", ["lunges", "jumping_jacks"])
def test_stepping_feet_land_on_the_floor(exercise):
  pos = clip(exercise, body=BODY, joint_noise_m=0.0, seconds=10.0)
  ankles = pos[:, [J["left_ankle"], J["right_ankle"]], 2]
  lowest = ankles.min(axis=1)
  assert abs(lowest.min() - BODY.ankle_height) < 0.01
  assert np.mean(lowest < BODY.ankle_height + 0.01) > 0.3  # on the floor a good part of the time
  assert (ankles.max(axis=0) > BODY.ankle_height + 0.02).all()  # each foot leaves the floor


def test_postures():
  pushups = clip("pushups", body=BODY, joint_noise_m=0.0)
  assert np.abs(trunk_elevation(pushups)).max() < 30
  assert pushups[:, J["thorax"], 2].max() < 0.7
  assert np.ptp(pushups[:, J["left_wrist"]], axis=0).max() < 0.01  # hands planted

  situps = clip("situps", body=BODY, joint_noise_m=0.0)
  assert situps[:, J["pelvis"], 2].max() < 0.15
  assert trunk_elevation(situps).min() < 15 and trunk_elevation(situps).max() > 45

  rows = clip("dumbbell_rows", body=BODY, joint_noise_m=0.0)
  assert (trunk_elevation(rows) < 45).all()

  for exercise in ("dumbbell_biceps_curls", "lateral_shoulder_raises", "tricep_extensions",
                   "dumbbell_shoulder_press", "jumping_jacks"):
    assert (trunk_elevation(clip(exercise, body=BODY)) > 75).all(), exercise

  press = clip("dumbbell_shoulder_press", body=BODY, joint_noise_m=0.0)
  above_head = press[:, J["left_wrist"], 2] > press[:, J["head"], 2]
  assert above_head.mean() > 0.3
  curls = clip("dumbbell_biceps_curls", body=BODY, joint_noise_m=0.0)
  assert (curls[:, J["left_wrist"], 2] < curls[:, J["left_shoulder"], 2]).all()


def test_sample_body_varies_within_range():
  rng = np.random.default_rng(0)
  bodies = [motion.sample_body(rng) for _ in range(200)]
  heights = np.array([b.height for b in bodies])
  assert heights.min() >= 1.55 and heights.max() <= 1.95 and heights.std() > 0.08
  ratio = np.array([b.forearm / b.height for b in bodies]) / (BODY.forearm / BODY.height)
  assert 0.92 <= ratio.min() and ratio.max() <= 1.08 and ratio.std() > 0.01


def test_bad_arguments_raise():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="unknown exercise 'yoga'; known: squats, pushups"):
    motion.synthesize("yoga", 4.0, 50.0, rng)
  with pytest.raises(ValueError, match="duration_s"):
    motion.synthesize("squats", -1.0, 50.0, rng)
  with pytest.raises(ValueError, match="rng"):
    motion.synthesize("squats", 4.0, 50.0, 0)
  with pytest.raises(ValueError, match="BodyParams.thigh"):
    dataclasses.replace(BODY, thigh=0.0)


def imu_features(pos: np.ndarray) -> np.ndarray:
  sensors = ("left_wrist", "right_forearm", "chest", "pelvis", "left_thigh", "right_shin")
  imu = virtual_imu.simulate_imu(pos, fps=50.0, locations=sensors)
  return np.concatenate([imu.mean(axis=1), imu.std(axis=1)], axis=-1).ravel()


def test_exercises_are_separable_from_simulated_imu():
  """Nearest class centroid (features scaled by their pooled within-class std)
  on per-channel mean/std of six virtual sensors, trained on five clips per
  exercise, tested on three clips per exercise with unseen seeds."""
  def dataset(seeds):
    x = [imu_features(clip(ex, seed=1000 * k + seed, seconds=10.0))
         for k, ex in enumerate(motion.EXERCISES) for seed in seeds]
    return np.array(x), np.repeat(np.arange(len(motion.EXERCISES)), len(seeds))

  x_train, y_train = dataset(range(5))
  x_test, y_test = dataset(range(5, 8))
  classes = range(len(motion.EXERCISES))
  scale = np.sqrt(np.mean([x_train[y_train == k].var(axis=0) for k in classes], axis=0)) + 1e-3
  centroids = np.stack([x_train[y_train == k].mean(axis=0) for k in classes]) / scale
  dist = np.linalg.norm(x_test[:, None] / scale - centroids[None], axis=-1)
  accuracy = np.mean(dist.argmin(axis=1) == y_test)
  assert accuracy > 0.9, accuracy
