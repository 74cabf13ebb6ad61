"""MHEALTH (Banos et al., UCI dataset 319) -> `Recordings`.

On-disk layout (dataset README.txt, MHEALTHDATASET/README.txt in the UCI zip; its text is also
reproduced in many public repositories): one log file per subject,

  MHEALTHDATASET/mHealth_subject<N>.log     N = 1..10

rows are samples, no header, columns separated by tabs (as public loaders read them; the
README does not say; we accept any whitespace). 24 columns:
   1- 3  chest acceleration x, y, z           4- 5  ECG lead 1, lead 2
   6- 8  left-ankle acceleration             9-11  left-ankle gyro    12-14  left-ankle magnetometer
  15-17  right-lower-arm acceleration       18-20  right-lower-arm gyro
  21-23  right-lower-arm magnetometer       24    label (0 for the null class)
(the README numbers the left-ankle magnetometer "13, 13, 14", an obvious typo for 12-14).
Labels 1..12 (README "Activity set"): standing still, sitting and relaxing, lying down, walking,
climbing stairs, waist bends forward, frontal elevation of arms, knees bending (crouching),
cycling, jogging, running, jump front & back. Label 0 -> y = -1.
README: Shimmer2 sensors on the chest, right wrist and left ankle; "All sensing modalities are
recorded at a sampling rate of 50 Hz"; "Units: Acceleration (m/s^2), gyroscope (deg/s),
magnetic field (local), ECG (mV)". 10 subjects, no official split: splits=None.

Assumptions:
  * Accelerometers read specific force with gravity included (raw Shimmer2 accelerometers: at
    rest |acc| ~ 9.8 m/s^2); the README does not say.
  * Gyroscope unit deg/s as the README states; we could not check it against the files here.
    `notes` carries the 99th percentile of |gyr| over labelled samples so a user can judge it (a
    moving wrist reaches hundreds of deg/s; a value of a few units would mean rad/s or
    uncalibrated counts, then use dataclasses.replace(rec, gyr_unit=...)).

Channels: acc_x..z, gyr_x..z, mag_x..z of the chosen sensor ("chest" has no gyroscope or
magnetometer: acc_x..z, ecg_1, ecg_2 and a note). Recording ids: one per subject file, numbered
in subject order.
"""

from __future__ import annotations

import os
import re

import numpy as np

from mujo_jax.downstream import recordings

DATA_DIR = "MHEALTHDATASET"
SAMPLE_RATE_HZ = 50.0
NUM_COLUMNS = 24
LABEL_COLUMN = 23          # 0-based
CLASS_NAMES = (
    "standing still", "sitting and relaxing", "lying down", "walking", "climbing stairs",
    "waist bends forward", "frontal elevation of arms", "knees bending (crouching)", "cycling",
    "jogging", "running", "jump front & back")
# Sensor -> (0-based columns by channel name, where it was worn).
SENSORS: dict[str, tuple[dict[str, int], str]] = {
    "right_lower_arm": (dict(zip(
        recordings.ACC_CHANNELS + recordings.GYR_CHANNELS + ("mag_x", "mag_y", "mag_z"),
        range(14, 23))), "right lower arm / wrist (Shimmer2)"),
    "left_ankle": (dict(zip(
        recordings.ACC_CHANNELS + recordings.GYR_CHANNELS + ("mag_x", "mag_y", "mag_z"),
        range(5, 14))), "left ankle (Shimmer2)"),
    "chest": (dict(zip(recordings.ACC_CHANNELS + ("ecg_1", "ecg_2"), range(0, 5))),
              "chest (Shimmer2)"),
}

_SUBJECT_FILE = re.compile(r"^mHealth_subject(\d+)\.log$")


def load(path: str, sensor: str = "right_lower_arm") -> recordings.Recordings:
  """Reads the mHealth_subject<N>.log files in `path` (or `path`/MHEALTHDATASET).

  sensor: "right_lower_arm" (default, the wrist), "left_ankle" or "chest" (no gyroscope).
  """
  if sensor not in SENSORS:
    raise ValueError(f"mhealth: sensor={sensor!r}; choose from {list(SENSORS)}")
  columns, where = SENSORS[sensor]
  files = _list_files(path)
  xs, ys, subjects, recording_ids = [], [], [], []
  for recording_id, (subject, file_path) in enumerate(files):
    table = _read_log(file_path, used=list(columns.values()))
    xs.append(table[:, list(columns.values())])
    labels = table[:, LABEL_COLUMN].astype(np.int32)
    ys.append(np.where(labels == 0, -1, labels - 1).astype(np.int32))
    subjects.append(np.full(len(table), subject, np.int32))
    recording_ids.append(np.full(len(table), recording_id, np.int32))
  x = np.concatenate(xs)
  y = np.concatenate(ys)
  notes = [f"{sensor} sensor; {len(files)} recordings (one per subject file); label 0 (null) "
           f"-> unlabelled ({int((y < 0).sum())} of {len(y)} samples)"]
  if sensor == "chest":
    notes.append("chest sensor has no gyroscope (nor magnetometer): no gyr_* channels")
  else:
    gyr = x[:, [list(columns).index(c) for c in recordings.GYR_CHANNELS]]
    speed = np.linalg.norm(gyr[y >= 0] if (y >= 0).any() else gyr, axis=1)
    notes.append(f"gyroscope unit deg/s per the dataset README (unverified); 99th percentile "
                 f"of |gyr| over labelled samples: {np.percentile(speed, 99):.3g}")
  return recordings.Recordings(
      x=x.astype(np.float32), y=y, subject=np.concatenate(subjects),
      recording=np.concatenate(recording_ids), class_names=CLASS_NAMES,
      channel_names=tuple(columns), sample_rate_hz=SAMPLE_RATE_HZ, acc_unit="m/s^2",
      gyr_unit="deg/s", acc_includes_gravity=True, splits=None, name="mhealth", sensor=where,
      notes=tuple(notes))


PROMPTS = dict(zip(CLASS_NAMES, (
    "a person standing still", "a person sitting and relaxing", "a person lying down",
    "a person walking", "a person climbing stairs", "a person bending the waist forward",
    "a person raising both arms in front", "a person bending the knees, crouching",
    "a person cycling", "a person jogging", "a person running",
    "a person jumping forward and back")))


def class_prompts(class_names) -> list[str]:
  """Zero-shot prompts that read as English ("a person doing standing still" would not)."""
  return [PROMPTS.get(c, f"a person doing {c}") for c in class_names]


def _list_files(path: str) -> list[tuple[int, str]]:
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


def _read_log(path: str, used: list[int]) -> np.ndarray:
  """[T, 24] float64; checks the shape, that the `used` columns are finite, and the labels."""
  try:
    table = np.loadtxt(path, ndmin=2, comments=None)
  except ValueError as e:
    where = recordings.first_bad_line(path, NUM_COLUMNS)
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
