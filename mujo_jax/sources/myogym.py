"""MyoGym (Koskimäki, Siirtola & Röning, UbiComp/ISWC 2017 adjunct): MyoGym.mat, read as stored.

The dataset is distributed as one MATLAB file, MyoGym.mat, with MyoGym_readmefirst.pdf. We could
not read that PDF here; the format below is established from public code that loads the file:
  * github.com/lok63/HAR-for-fitness-data "MyoGym EDA.ipynb" (hosts the file and the PDF under
    data/MyoGym/): scipy.io.loadmat reads it, so it is a MATLAB v5 file, not v7.3 (we use loadmat,
    no h5py). Keys: features_acc, features_gyro, features_labels, piirteet_emg (precomputed
    features; not used here), raw_data (2017041 x 17) and raw_data_labels. Its printed rows show
    the column layout and values.
  * github.com/cadams012/Gym-Activity-Recognition preprocess.ipynb and a data/loaders.py
    (MyoGymLoader) of another project: raw_data columns 9 acc time, 10-12 acc, 13 gyro time,
    14-16 gyro; raw_data_labels column 0 the exercise, column 1 the person; 99 is the null class;
    acc in g and gyro in deg/s (that loader converts "gyro from deg/s to rad/s"); "Both
    instruments record at 50 Hz"; duplicate readings "arising from the buffering process".

raw_data columns (0-based): 0 EMG timestamp, 1-8 EMG (8 pods, integers), 9 accelerometer
timestamp, 10-12 accelerometer x, y, z (g), 13 gyroscope timestamp, 14-16 gyroscope x, y, z
(deg/s). The values corroborate the units: they are exact multiples of Myo's raw scales
(thalmiclabs myohw.h: MYOHW_ACCELEROMETER_SCALE 2048 per g, MYOHW_GYROSCOPE_SCALE 16 per deg/s),
and at rest |acc| ~ 1. There are no orientation or magnetometer columns in raw_data.
raw_data_labels: [exercise 1..30 or 99 = null, person 1..10]. Exercise names (the same list in
both loaders above, apparently transcribed from the readme PDF) are CLASS_NAMES.

Rows come faster than the Myo IMU's 50 Hz: consecutive rows often repeat the previous row's IMU
sample (same accelerometer/gyroscope timestamps and values, new EMG); without those rows
(`repeated_imu_rows`) the rest is the 50 Hz IMU stream. Runs: one per contiguous run of a
person, split where the accelerometer timestamp steps back or jumps by more than max_gap_s (the
timestamp unit is inferred as median step = 1 / 50 s; they look like microseconds):
`recording_ids`.

Assumptions: the names of the 30 exercises (third-party transcription); 50 Hz after dropping
repeats; the accelerometer reads specific force with gravity included (raw Myo accelerometer);
which forearm carried the armband is not established here. No official split.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.io

from mujo_jax.sources import recording

FILE_NAME = "MyoGym.mat"
DATA_KEY, LABELS_KEY = "raw_data", "raw_data_labels"
SAMPLE_RATE_HZ = 50.0
NUM_COLUMNS = 17
EMG_COLUMNS = tuple(range(1, 9))
ACC_TIME, ACC_COLUMNS = 9, (10, 11, 12)
GYR_TIME, GYR_COLUMNS = 13, (14, 15, 16)
IMU_COLUMNS = tuple(range(9, 17))     # what a repeated IMU sample repeats
NULL_LABEL = 99
CLASS_NAMES = (
    "seated cable rows", "one-arm dumbbell row", "wide-grip pulldown behind the neck",
    "bent over barbell row", "reverse grip bent-over row", "wide-grip front pulldown",
    "bench press", "incline dumbbell flyes", "incline dumbbell press", "dumbbell flyes",
    "pushups", "leverage chest press", "close-grip barbell bench press", "bar skullcrusher",
    "triceps pushdown", "bench dip / dip", "overhead triceps extension",
    "tricep dumbbell kickback", "spider curl", "dumbbell alternate bicep curl",
    "incline hammer curl", "concentration curl", "cable curl", "hammer curl",
    "upright barbell row", "side lateral raise", "front dumbbell raise",
    "seated dumbbell shoulder press", "car drivers", "lying rear delt raise")
CHANNELS = (recording.ACC_CHANNELS + recording.GYR_CHANNELS
            + tuple(f"emg_{i}" for i in range(len(EMG_COLUMNS))))
ACC_UNIT = "g"
GYR_UNIT = "deg/s"
SENSOR = "forearm (Myo armband)"


def find_file(path: str) -> str:
  if os.path.isfile(path):
    return path
  if os.path.isdir(path):
    for candidate in (os.path.join(path, FILE_NAME), os.path.join(path, "MyoGym", FILE_NAME)):
      if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(f"{path}: no {FILE_NAME} here or in MyoGym/")
  raise FileNotFoundError(f"{path}: no such file (expected {FILE_NAME})")


def read_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
  """raw_data [N, 17] float64 and raw_data_labels [N, 2] int64, checked; errors name the file,
  the key and the row (1-based)."""
  try:
    contents = scipy.io.loadmat(path, variable_names=(DATA_KEY, LABELS_KEY))
  except NotImplementedError as e:   # scipy's answer to MATLAB v7.3 (HDF5) files
    raise ValueError(f"{path}: a MATLAB v7.3 (HDF5) file; the published MyoGym.mat is v5 and "
                     f"is read with scipy.io.loadmat ({e})") from e
  except Exception as e:  # scipy raises several types for unreadable files
    raise ValueError(f"{path}: cannot read as a .mat file: {e}") from e
  for key in (DATA_KEY, LABELS_KEY):
    if key not in contents:
      keys = sorted(k for k in contents if not k.startswith("__"))
      raise ValueError(f"{path}: no key {key!r} (found {keys})")
  data, labels = np.asarray(contents[DATA_KEY]), np.asarray(contents[LABELS_KEY])
  for key, value, columns in ((DATA_KEY, data, NUM_COLUMNS), (LABELS_KEY, labels, 2)):
    if not np.issubdtype(value.dtype, np.number) or value.ndim != 2 or value.shape[1] != columns:
      raise ValueError(f"{path}: key {key!r} must be a numeric [N, {columns}] matrix, got "
                       f"{value.dtype} {value.shape}")
  if len(data) != len(labels) or len(data) == 0:
    raise ValueError(f"{path}: {DATA_KEY!r} has {len(data)} rows, {LABELS_KEY!r} {len(labels)}; "
                     f"need the same, non-zero number")
  data = data.astype(np.float64)
  used = list(IMU_COLUMNS)
  bad = ~np.isfinite(data[:, used])
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(f"{path}: key {DATA_KEY!r} row {row + 1}, column {used[col]} (0-based): "
                     f"non-finite value")
  labels = labels.astype(np.float64)
  exercise, person = labels[:, 0], labels[:, 1]
  valid = (exercise == np.round(exercise)) & (
      ((exercise >= 1) & (exercise <= len(CLASS_NAMES))) | (exercise == NULL_LABEL))
  if not valid.all():
    row = int(np.argmin(valid))
    raise ValueError(f"{path}: key {LABELS_KEY!r} row {row + 1}, column 0: exercise "
                     f"{exercise[row]:g} is not 1..{len(CLASS_NAMES)} or {NULL_LABEL} (null)")
  valid = (person == np.round(person)) & (person >= 0) & (person < 2**31)
  if not valid.all():
    row = int(np.argmin(valid))
    raise ValueError(f"{path}: key {LABELS_KEY!r} row {row + 1}, column 1: person "
                     f"{person[row]:g} is not a non-negative integer")
  return data, labels.astype(np.int64)


def recording_ids(time: np.ndarray, person: np.ndarray, max_gap_s: float
                   ) -> tuple[np.ndarray, list[str]]:
  """int32 ids, new at a change of person, a backward step of `time` or a jump > max_gap_s."""
  step = np.diff(time)
  same = person[1:] == person[:-1]
  forward = step[same & (step > 0)]
  median_step = float(np.median(forward)) if forward.size else 0.0
  back = same & (step < 0)
  gap = np.zeros_like(same)
  if median_step:
    gap = same & (step > max_gap_s * SAMPLE_RATE_HZ * median_step)
  start = np.concatenate([[True], ~same | back | gap])
  ids = (np.cumsum(start) - 1).astype(np.int32)
  notes = [f"{int(start.sum())} recordings: one per contiguous run of a person, split where the "
           f"accelerometer timestamp steps back ({int(back.sum())}) or jumps more than "
           f"{max_gap_s:g} s ({int(gap.sum())}); median timestamp step {median_step:g} taken "
           f"as 1/{SAMPLE_RATE_HZ:g} s"]
  return ids, notes


def repeated_imu_rows(data: np.ndarray, person: np.ndarray) -> np.ndarray:
  """[N] bool: rows that repeat the previous row's IMU sample (same person, same IMU_COLUMNS)."""
  repeated = np.zeros(len(data), bool)
  repeated[1:] = ((person[1:] == person[:-1])
                  & (data[1:, IMU_COLUMNS] == data[:-1, IMU_COLUMNS]).all(axis=1))
  return repeated
