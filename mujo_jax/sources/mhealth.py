"""MHEALTH (Banos et al., UCI dataset 319): the official layout, read as stored.

One log file per subject,

  MHEALTHDATASET/mHealth_subject<N>.log     N = 1..10

rows are samples, no header, columns separated by tabs (as public loaders read them; the
README does not say; we accept any whitespace). 24 columns:
   1- 3  chest acceleration x, y, z           4- 5  ECG lead 1, lead 2
   6- 8  left-ankle acceleration             9-11  left-ankle gyro    12-14  left-ankle magnetometer
  15-17  right-lower-arm acceleration       18-20  right-lower-arm gyro
  21-23  right-lower-arm magnetometer       24    label (0 for the null class)
(the README numbers the left-ankle magnetometer "13, 13, 14", an obvious typo for 12-14).
Labels 1..12 (README "Activity set"): CLASS_NAMES; 0 is the null class.
README (MHEALTHDATASET/README.txt in the UCI zip): Shimmer2 sensors on the chest, right wrist
and left ankle; "All sensing modalities are recorded at a sampling rate of 50 Hz"; "Units:
Acceleration (m/s^2), gyroscope (deg/s), magnetic field (local), ECG (mV)": ACC_UNIT, GYR_UNIT.
Values are returned as stored, in those units; 10 subjects, no official split.
"""

from __future__ import annotations

import os
import re

import numpy as np

from mujo_jax.sources import recording

DATA_DIR = "MHEALTHDATASET"
SAMPLE_RATE_HZ = 50.0
NUM_COLUMNS = 24
LABEL_COLUMN = 23          # 0-based
ACC_UNIT = "m/s^2"
GYR_UNIT = "deg/s"
CLASS_NAMES = (
    "standing still", "sitting and relaxing", "lying down", "walking", "climbing stairs",
    "waist bends forward", "frontal elevation of arms", "knees bending (crouching)", "cycling",
    "jogging", "running", "jump front & back")
# Sensor -> (0-based columns by channel name, where it was worn).
SENSORS: dict[str, tuple[dict[str, int], str]] = {
    "right_lower_arm": (dict(zip(
        recording.ACC_CHANNELS + recording.GYR_CHANNELS + ("mag_x", "mag_y", "mag_z"),
        range(14, 23))), "right lower arm / wrist (Shimmer2)"),
    "left_ankle": (dict(zip(
        recording.ACC_CHANNELS + recording.GYR_CHANNELS + ("mag_x", "mag_y", "mag_z"),
        range(5, 14))), "left ankle (Shimmer2)"),
    "chest": (dict(zip(recording.ACC_CHANNELS + ("ecg_1", "ecg_2"), range(0, 5))),
              "chest (Shimmer2)"),
}

_SUBJECT_FILE = re.compile(r"^mHealth_subject(\d+)\.log$")


def list_files(path: str) -> list[tuple[int, str]]:
  """(subject, path) of every mHealth_subject<N>.log, in subject order."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: MHEALTH folder not found (expected "
                            f"{DATA_DIR}/mHealth_subject<N>.log)")
  for folder in (path, os.path.join(path, DATA_DIR)):
    if not os.path.isdir(folder):
      continue
    found = sorted((int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder)
                   if (m := _SUBJECT_FILE.match(name)))
    if found:
      return found
  raise FileNotFoundError(f"{path}: no mHealth_subject<N>.log files here or in {DATA_DIR}/")


def read_log(path: str, used: list[int]) -> np.ndarray:
  """[T, 24] float64; checks the shape, that the `used` columns are finite, and the labels."""
  try:
    table = np.loadtxt(path, ndmin=2, comments=None)
  except ValueError as e:
    where = recording.first_bad_line(path, NUM_COLUMNS)
    raise ValueError(f"{path}: {where or e}") from e
  if table.shape[0] == 0:
    raise ValueError(f"{path}: no data rows")
  if table.shape[1] != NUM_COLUMNS:
    raise ValueError(f"{path}: {table.shape[1]} columns, expected {NUM_COLUMNS} (23 signals and "
                     f"the label, dataset README)")
  bad = ~np.isfinite(table[:, used])
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(f"{path}: data row {row + 1}, column {used[col] + 1}: non-finite value")
  labels = table[:, LABEL_COLUMN]
  bad = (labels != np.round(labels)) | (labels < 0) | (labels > len(CLASS_NAMES))
  if bad.any():
    row = int(np.argmax(bad))
    raise ValueError(f"{path}: data row {row + 1}, column {LABEL_COLUMN + 1}: label "
                     f"{labels[row]:g} is not an integer in 0..{len(CLASS_NAMES)}")
  return table
