"""UTD-MHAD as whole trials of 50 steps (CMC-CMKM protocol): convert_utd_mhad --trial_steps."""

import dataclasses
import os

import numpy as np
import pytest
import scipy.io
from scipy import signal

from data_prep import convert_utd_mhad
from mujo_jax import input_pipeline
from mujo_jax import records
from mujo_jax import units
from mujo_jax.sources import utd_mhad

UTD_MHAD = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "utd_mhad")
needs_data = pytest.mark.skipif(not os.path.isdir(UTD_MHAD),
                                reason=f"UTD-MHAD not found at {UTD_MHAD}")
# One trial per split (train 1, 3, 5; val 7; test 2, 4, 6, 8); a22 has its sensor on the thigh.
TRIALS = ("a1_s1_t1", "a22_s2_t3", "a5_s7_t2")
QUIET = dict(log=lambda *_: None)


def linked_subset(root):
  """A UTD-MHAD folder holding only TRIALS (symlinks to the real files)."""
  for folder, kind in (("Inertial", "inertial"), ("Skeleton", "skeleton")):
    (root / folder).mkdir(parents=True)
    for name in TRIALS:
      os.symlink(os.path.abspath(os.path.join(UTD_MHAD, folder, f"{name}_{kind}.mat")),
                 root / folder / f"{name}_{kind}.mat")
  return str(root)


def read_split(out_dir, split):
  ds = input_pipeline.make_dataset(str(out_dir), split, batch_size=4, shuffle=False,
                                   num_epochs=1, drop_remainder=False, process_index=0,
                                   process_count=1,
                                   augment_config=input_pipeline.AugmentConfig("random"))
  return next(iter(ds))


@needs_data
def test_trials_resampled_to_50_steps_like_the_reference(tmp_path):
  source = linked_subset(tmp_path / "src")
  report = convert_utd_mhad.build(source, str(tmp_path / "out"), trial_steps=50,
                                  simulated_locations=False, workers=0, **QUIET)
  assert report.counts["clips"] == 3 and not report.counts["trials_cropped"]
  info = records.DatasetInfo.load(str(tmp_path / "out"))
  assert info.trial_steps == 50 and info.imu_window == info.pose_window == 50
  assert "not root-relative" in info.pose_units
  assert {s: v.num_examples for s, v in info.splits.items()} == {"train": 1, "val": 1, "test": 1}
  trials = {t.name: t for t in utd_mhad.list_trials(source)}
  for split, name in (("train", TRIALS[0]), ("test", TRIALS[1]), ("val", TRIALS[2])):
    b = read_split(tmp_path / "out", split)
    assert b["clip_id"].tolist() == [name.encode()]
    trial = trials[name]
    assert b["imu"].shape == (1, 50, 6) and b["pose"].shape == (1, 50, 20, 3)
    assert b["label"][0] == trial.action - 1
    assert info.imu_locations[b["imu_location"][0]] == trial.sensor_location
    assert b["imu_location_mask"][0].tolist() == [
        int(loc == trial.sensor_location) for loc in info.imu_locations]
    # The reference (InertialSampler, SkeletonSampler) resamples the raw .mat arrays with
    # scipy.signal.resample: d_iner [T, 6] in g, deg/s along axis 0, d_skel [20, 3, T] along 2.
    raw_iner = scipy.io.loadmat(trial.inertial_path)["d_iner"]
    raw_skel = scipy.io.loadmat(trial.skeleton_path)["d_skel"]
    to_si = np.array([units.STANDARD_GRAVITY] * 3 + [np.pi / 180] * 3)
    ref_imu = signal.resample(raw_iner, 50) * to_si
    ref_pose = signal.resample(raw_skel, 50, axis=2).transpose(2, 0, 1)
    imu, pose = b["imu"][0].astype(np.float64), b["pose"][0].astype(np.float64)
    np.testing.assert_allclose(imu, ref_imu, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(imu, signal.resample(utd_mhad.load_inertial(trial), 50),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(pose, ref_pose, atol=2e-3)  # camera frame: z ~ 3 m in float16
    # As stored: y up, not root-relative (the subject stands ~2-3 m in front of the camera).
    assert np.median(pose[:, 0, 1] - pose[:, 3, 1]) > 0.3  # head above hip_center in y
    assert np.median(pose[:, :, 2]) > 1.5


@needs_data
def test_trials_with_simulated_locations(tmp_path):
  source = linked_subset(tmp_path / "src")
  convert_utd_mhad.build(source, str(tmp_path / "out"), trial_steps=50, subjects=(1,),
                         simulated_locations=True, workers=0, **QUIET)
  info = records.DatasetInfo.load(str(tmp_path / "out"))
  ds = input_pipeline.make_dataset(str(tmp_path / "out"), "train", batch_size=1, shuffle=False,
                                   num_epochs=1, drop_remainder=False, process_index=0,
                                   process_count=1,
                                   augment_config=input_pipeline.AugmentConfig("all"))
  b = next(iter(ds))
  assert b["imu"].shape == (1, 16, 50, 6) and (b["imu_location_mask"] == 1).all()
  trial = utd_mhad.list_trials(source)[0]
  np.testing.assert_allclose(
      b["imu"][0, info.imu_locations.index("right_wrist")].astype(np.float64),
      signal.resample(utd_mhad.load_inertial(trial), 50), rtol=2e-3, atol=2e-3)
  chest = b["imu"][0, info.imu_locations.index("chest"), :, :3].astype(np.float64)
  assert 8.0 < np.median(np.linalg.norm(chest, axis=-1)) < 11.5  # standing: gravity


def test_trial_steps_round_trips_and_older_info_still_loads(tmp_path):
  info = records.DatasetInfo(name="x", imu_locations=("a", "b"), joint_names=("j",) * 20,
                             class_names=("c",), tokenizer="t", vocab_size=10, pad_id=0)
  assert info.trial_steps == 0 and (info.imu_window, info.pose_window) == (250, 125)
  trials = dataclasses.replace(info, trial_steps=50)
  assert (trials.imu_window, trials.pose_window) == (50, 50)
  assert trials.array_specs()["pose"].shape == (50, 20, 3)
  trials.save(str(tmp_path))
  assert records.DatasetInfo.load(str(tmp_path)) == trials
  # A dataset_info.json written before the field existed: no "trial_steps" key.
  old = info.to_json()
  del old["trial_steps"]
  (tmp_path / records.INFO_FILENAME).write_text(records.seal_info_json(old))
  loaded = records.DatasetInfo.load(str(tmp_path))
  assert loaded == info and loaded.imu_window == 250
  with pytest.raises(records.RecordFormatError, match="trial_steps"):
    _ = dataclasses.replace(info, trial_steps=-1).imu_window


def test_negative_trial_steps_is_refused():
  with pytest.raises(ValueError, match="trial_steps must be >= 0"):
    convert_utd_mhad.build(UTD_MHAD, "/nonexistent", trial_steps=-5, **QUIET)
