"""MotionSense, MHEALTH and MyoGym adapters on small files written in each official layout."""

import os
import re

import numpy as np
import pytest
import scipy.io

from mujo_jax.downstream import datasets
from mujo_jax.downstream import mhealth
from mujo_jax.downstream import motionsense
from mujo_jax.downstream import myogym
from mujo_jax.sources import motionsense as motionsense_files
from mujo_jax.sources import recording

# -- MotionSense: A_DeviceMotion_data/<activity>_<trial>/sub_<n>.csv ------------------------------

MOTIONSENSE_HEADER = "," + ",".join(motionsense_files.FEATURES) + "\n"


def motionsense_columns(file_index: int, n: int) -> np.ndarray:
  """[n, 12] in FEATURES order. The phone stands upright and still: Core Motion's gravity is
  (0, -1, 0) g; userAcceleration and the rotation rate carry values that identify the file."""
  i = np.arange(n)
  attitude = np.stack([np.full(n, 0.5), np.full(n, -0.25), np.full(n, float(file_index))], 1)
  gravity = np.tile([0.0, -1.0, 0.0], (n, 1))
  rotation = np.stack([0.01 * i, np.full(n, 0.5 + file_index), -0.002 * i], 1)
  user = np.stack([np.full(n, 0.125 * file_index), np.zeros(n), np.full(n, -0.25)], 1)
  return np.concatenate([attitude, gravity, rotation, user], 1)


def write_motionsense_csv(path, columns: np.ndarray, header: str = MOTIONSENSE_HEADER):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(header)
    for i, row in enumerate(columns):
      f.write(f"{i}," + ",".join(f"{v:.6f}" for v in row) + "\n")


# (folder, subject, rows); sorted by (trial, subject) this is also the recording order.
MOTIONSENSE_FILES = (("dws_1", 1, 120), ("dws_1", 2, 100), ("wlk_7", 1, 80), ("jog_16", 3, 60))


def write_motionsense(root) -> str:
  data_dir = os.path.join(root, "A_DeviceMotion_data")
  for k, (folder, subject, n) in enumerate(MOTIONSENSE_FILES):
    write_motionsense_csv(os.path.join(data_dir, folder, f"sub_{subject}.csv"),
                          motionsense_columns(k, n))
  return data_dir


def test_motionsense_reads_the_official_layout(tmp_path):
  write_motionsense(tmp_path)
  rec = motionsense.load(str(tmp_path))
  lengths = [n for _, _, n in MOTIONSENSE_FILES]
  assert rec.x.shape == (sum(lengths), 15) and rec.x.dtype == np.float32
  assert rec.channel_names[:6] == recording.ACC_CHANNELS + recording.GYR_CHANNELS
  assert rec.class_names == ("downstairs", "upstairs", "walking", "jogging", "standing",
                             "sitting")
  assert (rec.sample_rate_hz, rec.acc_unit, rec.gyr_unit) == (50.0, "g", "rad/s")
  assert rec.acc_includes_gravity and rec.splits is None and rec.name == "motionsense"
  starts = np.cumsum([0] + lengths)
  for k, (folder, subject, n) in enumerate(MOTIONSENSE_FILES):
    part = slice(starts[k], starts[k + 1])
    columns = motionsense_columns(k, n)
    # acc = -(gravity + userAcceleration): upright and still reads +1 g up along y.
    np.testing.assert_allclose(rec.channels(recording.ACC_CHANNELS)[part],
                               np.tile([-0.125 * k, 1.0, 0.25], (n, 1)), atol=1e-6)
    np.testing.assert_allclose(rec.channels(recording.GYR_CHANNELS)[part], columns[:, 6:9],
                               atol=1e-6)
    np.testing.assert_allclose(rec.channels(("attitude_yaw", "gravity_y", "user_acc_x"))[part],
                               columns[:, [2, 4, 9]], atol=1e-6)
    assert set(rec.subject[part]) == {subject}
    assert set(rec.recording[part]) == {k}
    assert set(rec.y[part]) == {rec.class_names.index(
        {"dws": "downstairs", "wlk": "walking", "jog": "jogging"}[folder[:3]])}
  assert any("-(gravity + userAcceleration)" in n for n in rec.notes)


def test_motionsense_activity_subset_and_user_acceleration(tmp_path):
  write_motionsense(tmp_path)
  rec = motionsense.load(str(tmp_path), activities=("wlk", "dws"),
                         accelerometer="user_acceleration")
  assert rec.class_names == ("downstairs", "walking")        # the official order, not ours
  assert len(rec.x) == 120 + 100 + 80
  np.testing.assert_array_equal(np.unique(rec.y), [0, 1])
  assert not rec.acc_includes_gravity
  np.testing.assert_allclose(rec.channels(recording.ACC_CHANNELS)[-1], [-0.25, 0.0, 0.25])
  assert any("skipped 1 files" in n for n in rec.notes)
  with pytest.raises(ValueError, match="activities"):
    motionsense.load(str(tmp_path), activities=("run",))
  with pytest.raises(ValueError, match="accelerometer"):
    motionsense.load(str(tmp_path), accelerometer="raw")


def test_motionsense_finds_nested_and_direct_folders(tmp_path):
  nested = tmp_path / "kaggle" / "A_DeviceMotion_data"
  write_motionsense(nested)                       # .../A_DeviceMotion_data/A_DeviceMotion_data
  (nested / "A_DeviceMotion_data" / "__MACOSX").mkdir()
  (nested / "A_DeviceMotion_data" / "dws_1" / ".DS_Store").write_text("x")
  for path in (tmp_path / "kaggle", nested / "A_DeviceMotion_data"):
    rec = datasets.load("motionsense", str(path))
    assert len(rec.x) == 360 and rec.recording.max() == 3
  assert any("ignored 2 hidden" in n for n in rec.notes)


def test_motionsense_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    motionsense.load(str(tmp_path / "nowhere"))
  data_dir = write_motionsense(tmp_path)
  run = os.path.join(data_dir, "run_3", "sub_1.csv")
  write_motionsense_csv(run, motionsense_columns(0, 5))
  with pytest.raises(ValueError, match="run_3"):
    motionsense.load(str(tmp_path))
  os.rename(os.path.dirname(run), os.path.join(data_dir, "dws_5"))   # dws trials: 1, 2, 11
  with pytest.raises(ValueError, match="dws_5.*official dws trial"):
    motionsense.load(str(tmp_path))
  os.rename(os.path.join(data_dir, "dws_5"), os.path.join(data_dir, "dws_2"))
  stray = os.path.join(data_dir, "dws_2", "notes.txt")
  with open(stray, "w") as f:
    f.write("hello")
  with pytest.raises(ValueError, match=re.escape(stray)):
    motionsense.load(str(tmp_path))
  os.remove(stray)
  bad = os.path.join(data_dir, "dws_2", "sub_1.csv")
  write_motionsense_csv(bad, motionsense_columns(0, 5),
                        header=MOTIONSENSE_HEADER.replace("rotationRate.y", "rotation.y"))
  with pytest.raises(ValueError, match=re.escape(bad) + ".*rotationRate.y"):
    motionsense.load(str(tmp_path))
  write_motionsense_csv(bad, motionsense_columns(0, 5))
  lines = open(bad).read().splitlines()
  with open(bad, "w") as f:
    f.write("\n".join(lines[:3] + [lines[3].replace("0.500000", "abc", 1)] + lines[4:]) + "\n")
  with pytest.raises(ValueError, match=re.escape(bad) + ": line 4, column 2: .*'abc'"):
    motionsense.load(str(tmp_path))
  with open(bad, "w") as f:
    f.write("\n".join(lines[:5] + [lines[5].rsplit(",", 1)[0]] + lines[6:]) + "\n")
  with pytest.raises(ValueError, match=re.escape(bad) + ": line 6: 12 fields, expected 13"):
    motionsense.load(str(tmp_path))


# -- MHEALTH: MHEALTHDATASET/mHealth_subject<N>.log --------------------------------------------


def mhealth_table(subject: int, n: int) -> np.ndarray:
  """[n, 24]: signal column c (0-based) holds subject * 100 + c + 0.001 * row; labels: 20 null
  rows, then classes 1, 12 and 5 in blocks, then null again."""
  signals = subject * 100 + np.arange(23)[None, :] + 0.001 * np.arange(n)[:, None]
  labels = np.zeros(n)
  labels[20:40], labels[40:60], labels[60:n - 10] = 1, 12, 5
  return np.concatenate([signals, labels[:, None]], 1)


MHEALTH_SUBJECTS = ((1, 100), (2, 80), (10, 90))   # numeric order: 10 after 2


def write_mhealth(root) -> str:
  data_dir = os.path.join(root, "MHEALTHDATASET")
  os.makedirs(data_dir, exist_ok=True)
  for subject, n in MHEALTH_SUBJECTS:
    write_mhealth_log(os.path.join(data_dir, f"mHealth_subject{subject}.log"),
                      mhealth_table(subject, n))
  with open(os.path.join(data_dir, "README.txt"), "w") as f:
    f.write("mHealth dataset\n")
  return data_dir


def write_mhealth_log(path, table: np.ndarray):
  with open(path, "w") as f:
    for row in table:
      f.write("\t".join(f"{v:.4f}" for v in row[:-1]) + f"\t{int(row[-1])}\n")


def test_mhealth_reads_the_wrist_sensor_by_default(tmp_path):
  write_mhealth(tmp_path)
  rec = mhealth.load(str(tmp_path))          # the parent of MHEALTHDATASET
  n_total = sum(n for _, n in MHEALTH_SUBJECTS)
  assert rec.x.shape == (n_total, 9)
  assert rec.channel_names == (recording.ACC_CHANNELS + recording.GYR_CHANNELS
                               + ("mag_x", "mag_y", "mag_z"))
  assert (rec.sample_rate_hz, rec.acc_unit, rec.gyr_unit) == (50.0, "m/s^2", "deg/s")
  assert rec.acc_includes_gravity and rec.splits is None and rec.name == "mhealth"
  assert len(rec.class_names) == 12 and rec.class_names[0] == "standing still"
  assert rec.class_names[11] == "jump front & back"
  start = 0
  for k, (subject, n) in enumerate(MHEALTH_SUBJECTS):
    part = slice(start, start + n)
    start += n
    rows = 0.001 * np.arange(n)
    # README columns 15-17 acc, 18-20 gyro of the right lower arm (0-based 14..19).
    np.testing.assert_allclose(rec.channels(("acc_x",))[part, 0], subject * 100 + 14 + rows,
                               atol=1e-4)
    np.testing.assert_allclose(rec.channels(("gyr_y",))[part, 0], subject * 100 + 18 + rows,
                               atol=1e-4)
    np.testing.assert_allclose(rec.channels(("mag_z",))[part, 0], subject * 100 + 22 + rows,
                               atol=1e-4)
    y = rec.y[part]
    assert (y[:20] == -1).all() and (y[20:40] == 0).all() and (y[40:60] == 11).all()
    assert (y[60:n - 10] == 4).all() and (y[n - 10:] == -1).all()
    assert set(rec.subject[part]) == {subject} and set(rec.recording[part]) == {k}
  assert any("99th percentile" in n for n in rec.notes)


def test_mhealth_other_sensors(tmp_path):
  data_dir = write_mhealth(tmp_path)
  ankle = mhealth.load(data_dir, sensor="left_ankle")        # the folder itself also works
  np.testing.assert_allclose(ankle.channels(("acc_x", "gyr_x", "gyr_z"))[0], [105, 108, 110],
                             atol=1e-4)
  chest = mhealth.load(data_dir, sensor="chest")
  assert chest.channel_names == recording.ACC_CHANNELS + ("ecg_1", "ecg_2")
  assert not chest.has_gyroscope
  np.testing.assert_allclose(chest.x[0], [100, 101, 102, 103, 104], atol=1e-4)
  assert any("no gyroscope" in n for n in chest.notes)
  with pytest.raises(ValueError, match="sensor"):
    mhealth.load(data_dir, sensor="head")


def test_mhealth_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    mhealth.load(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="mHealth_subject"):
    mhealth.load(str(tmp_path / "empty"))
  data_dir = write_mhealth(tmp_path)
  bad = os.path.join(data_dir, "mHealth_subject2.log")
  table = mhealth_table(2, 80)
  write_mhealth_log(bad, table[:, 1:])                                  # 23 columns
  with pytest.raises(ValueError, match=re.escape(bad) + ": 23 columns, expected 24"):
    mhealth.load(data_dir)
  write_mhealth_log(bad, table)
  lines = open(bad).read().splitlines()
  lines[6] = lines[6].replace("218.0060", "x.y", 1)
  with open(bad, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=re.escape(bad) + ": line 7, column 19: .*'x.y'"):
    mhealth.load(data_dir)
  lines[6] = lines[6].rsplit("\t", 2)[0]
  with open(bad, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=re.escape(bad) + ": line 7: 22 fields, expected 24"):
    mhealth.load(data_dir)
  table[30, -1] = 13
  write_mhealth_log(bad, table)
  with pytest.raises(ValueError, match=re.escape(bad) + ": data row 31, column 24: label 13"):
    mhealth.load(data_dir)


def test_mhealth_round_trip_through_the_generic_npz(tmp_path):
  rec = mhealth.load(write_mhealth(tmp_path / "raw"))
  path = str(tmp_path / "mhealth.npz")
  recording.save_npz(path, rec)
  back = recording.load_npz(path)
  np.testing.assert_array_equal(back.x, rec.x)
  for key in ("y", "subject", "recording"):
    np.testing.assert_array_equal(getattr(back, key), getattr(rec, key))
  assert (back.class_names, back.channel_names) == (rec.class_names, rec.channel_names)
  assert (back.sample_rate_hz, back.acc_unit, back.gyr_unit, back.acc_includes_gravity) == (
      50.0, "m/s^2", "deg/s", True)


# -- MyoGym: MyoGym.mat, keys raw_data [N, 17] and raw_data_labels [N, 2] -----------------------


def myogym_rows(person: int, n: int, exercise: int, gap_at: int | None = None):
  """IMU samples every 20000 us (50 Hz), every 5th followed by a row that repeats it with new
  EMG (as the published file does); a 5 s jump in the timestamps before sample `gap_at`."""
  rng = np.random.default_rng(person)
  data, labels = [], []
  for k in range(n):
    t = 1e9 + 20000 * k + (5e6 if gap_at is not None and k >= gap_at else 0)
    imu = [t, 0.5 * person, k / 2048, 1.0, t, k / 16, -1.0, 2.0]
    label = [99 if k < 20 else exercise, person]
    for _ in range(2 if k % 5 == 4 else 1):
      data.append([t - 3000] + list(rng.integers(-128, 128, 8)) + imu)
      labels.append(label)
  return data, labels


def write_myogym(folder, **overrides) -> str:
  data1, labels1 = myogym_rows(1, 100, exercise=7)
  data2, labels2 = myogym_rows(2, 80, exercise=30, gap_at=40)
  contents = {"raw_data": np.array(data1 + data2, float),
              "raw_data_labels": np.array(labels1 + labels2, float),
              "features_acc": np.zeros((3, 4))}
  contents.update(overrides)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "MyoGym.mat")
  scipy.io.savemat(path, contents)
  return path


def test_myogym_reads_the_mat_file(tmp_path):
  path = write_myogym(str(tmp_path))
  rec = myogym.load(path)
  assert rec.x.shape == (180, 14)        # 100 + 80 IMU samples; 20 + 16 repeats dropped
  assert rec.channel_names == (recording.ACC_CHANNELS + recording.GYR_CHANNELS
                               + tuple(f"emg_{i}" for i in range(8)))
  assert (rec.sample_rate_hz, rec.acc_unit, rec.gyr_unit) == (50.0, "g", "deg/s")
  assert rec.acc_includes_gravity and rec.splits is None and rec.name == "myogym"
  assert len(rec.class_names) == 30 and rec.class_names[6] == "bench press"
  k = np.concatenate([np.arange(100), np.arange(80)])
  np.testing.assert_allclose(rec.channels(recording.ACC_CHANNELS),
                             np.stack([np.repeat([0.5, 1.0], [100, 80]), k / 2048,
                                       np.ones(180)], 1), atol=1e-6)
  np.testing.assert_allclose(rec.channels(("gyr_x", "gyr_z")),
                             np.stack([k / 16, np.full(180, 2.0)], 1), atol=1e-5)
  np.testing.assert_array_equal(rec.subject, np.repeat([1, 2], [100, 80]))
  np.testing.assert_array_equal(rec.recording, np.repeat([0, 1, 2], [100, 40, 40]))
  expected_y = np.concatenate([np.full(20, -1), np.full(80, 6), np.full(20, -1), np.full(60, 29)])
  np.testing.assert_array_equal(rec.y, expected_y)
  assert any("dropped 36 of 216 rows" in n for n in rec.notes)
  assert any("3 recordings" in n and "(1)" in n for n in rec.notes)
  # Through the registry, with the folder as path, keeping the repeated rows.
  kept = datasets.load("myogym", str(tmp_path), drop_repeated_imu=False)
  assert len(kept.x) == 216 and kept.recording.max() == 2


def test_myogym_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    myogym.load(str(tmp_path / "nowhere"))
  path = write_myogym(str(tmp_path / "a"), raw_data_labels=np.array([[99, 1]] * 3 + [[31, 1]]
                                                                    + [[5, 1]] * 212, float))
  with pytest.raises(ValueError, match=re.escape(path) + ".*row 4, column 0: exercise 31"):
    myogym.load(path)
  path = write_myogym(str(tmp_path / "b"), raw_data=np.zeros((216, 16)))
  with pytest.raises(ValueError, match=re.escape(path) + ".*'raw_data'.*\\[N, 17\\]"):
    myogym.load(path)
  path = str(tmp_path / "c.mat")
  scipy.io.savemat(path, {"data": np.zeros((2, 17))})
  with pytest.raises(ValueError, match=re.escape(path) + ": no key 'raw_data'"):
    myogym.load(path)
  data, labels = myogym_rows(1, 30, exercise=3)
  data[10][11] = np.nan
  path = write_myogym(str(tmp_path / "d"), raw_data=np.array(data, float),
                      raw_data_labels=np.array(labels, float))
  with pytest.raises(ValueError, match=re.escape(path) + ".*row 11, column 11 .*non-finite"):
    myogym.load(path)
  path = str(tmp_path / "v73.mat")     # the header of a MATLAB v7.3 (HDF5) file
  with open(path, "wb") as f:
    f.write(b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM" + bytes(512))
  with pytest.raises(ValueError, match=re.escape(path) + ": a MATLAB v7.3"):
    myogym.load(path)
  with pytest.raises(ValueError, match="max_gap_s"):
    myogym.load(path, max_gap_s=0)


def test_zero_shot_prompts_read_as_english():
  assert datasets.class_prompts("motionsense", ("downstairs", "sitting")) == [
      "a person walking downstairs", "a person sitting"]
  assert datasets.class_prompts("mhealth", mhealth.CLASS_NAMES)[0] == "a person standing still"
  assert datasets.class_prompts("myogym", ("bench press",)) == ["a person doing bench press"]
