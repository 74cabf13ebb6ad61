"""UTD-MHAD layout, loaders and alignment: on the real data, and on small .mat files."""

import logging
import os
import re

import numpy as np
import pytest
import scipy.io

from mujo_jax.sim import skeletons
from mujo_jax.sources import utd_mhad

UTD_MHAD = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "utd_mhad")
needs_data = pytest.mark.skipif(not os.path.isdir(UTD_MHAD),
                                reason=f"UTD-MHAD not found at {UTD_MHAD}")


@pytest.fixture(scope="module")
def real_trials():
  return utd_mhad.list_trials(UTD_MHAD)


@needs_data
def test_real_data_has_861_paired_trials(real_trials):
  unpaired = []
  assert len(utd_mhad.list_trials(UTD_MHAD, unpaired)) == 861 and not unpaired
  assert [t.name for t in real_trials] == sorted(
      (t.name for t in real_trials),
      key=lambda n: tuple(int(p[1:]) for p in n.split("_")))
  assert {t.subject for t in real_trials} == set(range(1, 9))
  assert {t.action for t in real_trials} == set(range(1, 28))
  for t in real_trials:
    assert os.path.basename(t.inertial_path) == f"{t.name}_inertial.mat"
    assert os.path.basename(t.skeleton_path) == f"{t.name}_skeleton.mat"
  locations = {t.action: t.sensor_location for t in real_trials}
  assert {locations[a] for a in range(1, 22)} == {"right_wrist"}
  assert {locations[a] for a in range(22, 28)} == {"right_thigh"}


@needs_data
def test_real_shapes_units_and_alignment(real_trials):
  rest_acc, fps = [], []
  for t in real_trials[::7]:
    inertial, skeleton = utd_mhad.load_inertial(t), utd_mhad.load_skeleton(t)
    assert inertial.dtype == skeleton.dtype == np.float64
    assert inertial.ndim == 2 and inertial.shape[1] == 6
    assert skeleton.shape[1:] == (20, 3) and len(skeleton) < len(inertial)
    # Subjects start at rest: the first 0.2 s read gravity only.
    rest_acc.append(np.median(np.linalg.norm(inertial[:10, :3], axis=1)))
    assert np.abs(inertial[:, 3:]).max() < 35.0   # rad/s; raw deg/s peaks are in the hundreds
    fps.append(utd_mhad.skeleton_fps(skeleton, inertial))
  assert np.median(rest_acc) == pytest.approx(9.81, rel=0.15)
  # README: inertial samples per skeleton frame, median 2.61 -> ~19 Hz skeleton.
  assert 17.0 < np.median(fps) < 21.0


@needs_data
def test_up_points_from_feet_to_head(real_trials):
  up = np.array(utd_mhad.UP)
  assert np.linalg.norm(up) == pytest.approx(1.0)
  kinect = skeletons.get_skeleton("kinect_v1_20")
  head, feet = kinect.index("head"), [kinect.index("left_foot"), kinect.index("right_foot")]
  for t in real_trials[::5]:
    pos = utd_mhad.load_skeleton(t)
    body = pos[:, head] - pos[:, feet].mean(axis=1)
    assert (body @ up).min() > 0.3, t.name   # head above feet in every frame, even seated
    direction = body.mean(axis=0) / np.linalg.norm(body.mean(axis=0))
    assert direction @ up > 0.9, t.name       # and the body is nearly vertical on average


def test_constants():
  assert len(utd_mhad.ACTIONS) == 27
  assert utd_mhad.ACTIONS[0] == "right arm swipe to the left"
  assert utd_mhad.ACTIONS[26] == "squat (two arms stretch out)"
  splits = utd_mhad.SUBJECT_SPLITS
  assert splits == {"train": (1, 3, 5), "val": (7,), "test": (2, 4, 6, 8)}


def test_aligned_fps_stretches_skeleton_over_inertial_duration():
  # 60 frames over 150 samples at 50 Hz = 3 s -> 20 fps.
  assert utd_mhad.aligned_fps(60, 150) == pytest.approx(20.0)
  assert utd_mhad.aligned_fps(60, 150, inertial_hz=100.0) == pytest.approx(40.0)
  assert utd_mhad.skeleton_fps(np.zeros((30, 20, 3)), np.zeros((50, 6))) == pytest.approx(30.0)
  with pytest.raises(ValueError, match="at least one"):
    utd_mhad.aligned_fps(0, 150)


def _write(root, name, kind, key, value):
  folder = root / ("Inertial" if kind == "inertial" else "Skeleton")
  folder.mkdir(exist_ok=True)
  path = folder / f"{name}_{kind}.mat"
  scipy.io.savemat(str(path), {key: value})
  return str(path)


def _dataset(tmp_path, n=40, t_skel=16):
  rng = np.random.default_rng(0)
  iner = rng.normal(size=(n, 6))
  skel = rng.normal(size=(20, 3, t_skel))
  for name in ("a1_s1_t1", "a22_s2_t3", "a10_s1_t2"):
    _write(tmp_path, name, "inertial", "d_iner", iner)
    _write(tmp_path, name, "skeleton", "d_skel", skel)
  return iner, skel


def test_loaders_convert_units_and_axes(tmp_path):
  iner, skel = _dataset(tmp_path)
  trials = utd_mhad.list_trials(str(tmp_path))
  assert [t.name for t in trials] == ["a1_s1_t1", "a10_s1_t2", "a22_s2_t3"]
  assert [t.sensor_location for t in trials] == ["right_wrist", "right_wrist", "right_thigh"]
  inertial = utd_mhad.load_inertial(trials[0])
  np.testing.assert_allclose(inertial[:, :3], iner[:, :3] * 9.80665)
  np.testing.assert_allclose(inertial[:, 3:], iner[:, 3:] * np.pi / 180)
  skeleton = utd_mhad.load_skeleton(trials[0])
  assert skeleton.shape == (16, 20, 3)
  np.testing.assert_array_equal(skeleton[5, 7], skel[7, :, 5])


def test_missing_counterpart_is_reported_and_skipped(tmp_path, caplog):
  _dataset(tmp_path)
  only_inertial = _write(tmp_path, "a3_s4_t1", "inertial", "d_iner", np.zeros((40, 6)))
  only_skeleton = _write(tmp_path, "a3_s4_t2", "skeleton", "d_skel", np.zeros((20, 3, 16)))
  unpaired = []
  with caplog.at_level(logging.WARNING):
    trials = utd_mhad.list_trials(str(tmp_path), unpaired)
  assert len(trials) == 3 and all(t.action != 3 for t in trials)
  assert sorted(unpaired) == sorted([only_inertial, only_skeleton])
  assert "a3_s4_t1_inertial.mat" in caplog.text and "no counterpart in Skeleton/" in caplog.text
  assert "a3_s4_t2_skeleton.mat" in caplog.text and "no counterpart in Inertial/" in caplog.text


def test_missing_folder_is_named(tmp_path):
  (tmp_path / "Inertial").mkdir()
  with pytest.raises(FileNotFoundError, match="Skeleton"):
    utd_mhad.list_trials(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="Inertial"):
    utd_mhad.list_trials(str(tmp_path / "nowhere"))


def test_wrong_key_names_file_and_key(tmp_path):
  _dataset(tmp_path)
  path = _write(tmp_path, "a1_s1_t1", "inertial", "acc", np.zeros((40, 6)))
  spath = _write(tmp_path, "a1_s1_t1", "skeleton", "skel", np.zeros((20, 3, 16)))
  trial = utd_mhad.list_trials(str(tmp_path))[0]
  with pytest.raises(ValueError, match=f"{re.escape(path)}.*no key 'd_iner'.*'acc'"):
    utd_mhad.load_inertial(trial)
  with pytest.raises(ValueError, match=f"{re.escape(spath)}.*no key 'd_skel'"):
    utd_mhad.load_skeleton(trial)


@pytest.mark.parametrize("shape", [(40, 3), (6, 40), (40,), (1, 6)])
def test_wrong_inertial_shape_names_file(tmp_path, shape):
  _dataset(tmp_path)
  path = _write(tmp_path, "a1_s1_t1", "inertial", "d_iner", np.zeros(shape))
  expected = f"{re.escape(path)}.*'d_iner' must have shape \\(T, 6\\)"
  with pytest.raises(ValueError, match=expected):
    utd_mhad.load_inertial(utd_mhad.list_trials(str(tmp_path))[0])


@pytest.mark.parametrize("shape", [(16, 20, 3), (25, 3, 16), (20, 3)])
def test_wrong_skeleton_shape_names_file(tmp_path, shape):
  _dataset(tmp_path)
  path = _write(tmp_path, "a1_s1_t1", "skeleton", "d_skel", np.zeros(shape))
  expected = f"{re.escape(path)}.*'d_skel' must have shape \\(20, 3, T\\)"
  with pytest.raises(ValueError, match=expected):
    utd_mhad.load_skeleton(utd_mhad.list_trials(str(tmp_path))[0])


def test_non_finite_values_name_file(tmp_path):
  _dataset(tmp_path)
  bad = np.zeros((40, 6))
  bad[3, 2] = np.nan
  path = _write(tmp_path, "a1_s1_t1", "inertial", "d_iner", bad)
  with pytest.raises(ValueError, match=f"{re.escape(path)}.*non-finite"):
    utd_mhad.load_inertial(utd_mhad.list_trials(str(tmp_path))[0])
