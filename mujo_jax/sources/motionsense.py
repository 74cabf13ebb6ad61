"""MotionSense (Malekzadeh et al.) Device Motion data: the official layout, units and sign.

On-disk layout (official repository github.com/mmalekzadeh/motion-sense, data/
A_DeviceMotion_data.zip; README.md "(A) DeviceMotion_data" and codes/README.md, whose loader
opens 'A_DeviceMotion_data/' + act + '_' + trial + '/sub_' + subject + '.csv'):

  A_DeviceMotion_data/<activity>_<trial>/sub_<subject>.csv

Each CSV has a header row whose first field is empty (an unnamed row index; the official loader
drops 'Unnamed: 0') followed by 12 columns: attitude.roll/pitch/yaw, gravity.x/y/z,
rotationRate.x/y/z, userAcceleration.x/y/z. Activities and their trial folders (codes/README.md
TRIAL_CODES): dws 1,2,11; ups 3,4,12; wlk 7,8,15; jog 9,16; std 6,14; sit 5,13. 24 subjects
(README table, data/data_subjects_info.csv), iPhone 6s in the participant's front trouser
pocket, Core Motion's CMDeviceMotion via SensingKit (README). No official split.
The Kaggle copy nests the folder twice (A_DeviceMotion_data/A_DeviceMotion_data/);
`find_data_dir` finds the trial folders at `path`, `path`/A_DeviceMotion_data or one level
deeper.

Units and signs (Apple Core Motion documentation):
  * gravity and userAcceleration are CMAcceleration values, in G ("X-axis acceleration in G's");
    CMDeviceMotion.gravity: "the total acceleration of the device is equal to gravity plus the
    acceleration the user imparts to the device (userAcceleration)".
  * rotationRate is CMRotationRate, radians per second; right-hand rule (documented by Apple for
    GCRotationRate, assumed the same for Core Motion): used unchanged.
  * Sign: Core Motion reports a phone lying face up as (0, 0, -1) g (NSHipster "CMDeviceMotion",
    quoted at mjtsai.com/blog/2014/10/30/cmdevicemotion; Stack Overflow question 22327976,
    mirrored at brokencontrollers.com/faq/22327976.shtml: a dropped phone reads
    userAcceleration +1 g *up*). That is minus the specific force an IMU reports (+1 g
    up at rest), the convention of the simulator (virtual_imu: R^T (a - g)). So `channels`'
    "specific_force" mode gives acc = -(gravity + userAcceleration), in g (ACC_UNIT). Without
    the flip acc would be a reflection of the gyroscope's frame.

Assumptions (not stated in the official README; the files carry no timestamps):
  * 50 Hz. Third-party loaders use 50 Hz and we believe the dataset paper (Malekzadeh et al.,
    "Mobile Sensor Data Anonymization", IoTDI 2019, arXiv:1810.11546) says so; not verified
    verbatim here.
  * The sign flip above rests on Apple's documented face-up reading and community reports, not on
    a check against these files (at rest, the flipped acc should point up along the phone's
    axis that faces up, e.g. acc_y ~ +1 g for a phone standing upright in a pocket).

`channels` returns acc_x..z and gyr_x..z, then the stored columns unchanged (CHANNELS):
attitude_roll/pitch/yaw (rad), gravity_x..z and user_acc_x..z (g, Core Motion sign).
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from mujo_jax.sources import recording

DATA_DIR = "A_DeviceMotion_data"
SAMPLE_RATE_HZ = 50.0
# Activity code -> (class name, official trial folder numbers), in the official code's order.
ACTIVITIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "dws": ("downstairs", (1, 2, 11)),
    "ups": ("upstairs", (3, 4, 12)),
    "wlk": ("walking", (7, 8, 15)),
    "jog": ("jogging", (9, 16)),
    "std": ("standing", (6, 14)),
    "sit": ("sitting", (5, 13)),
}
FEATURES = ("attitude.roll", "attitude.pitch", "attitude.yaw",
            "gravity.x", "gravity.y", "gravity.z",
            "rotationRate.x", "rotationRate.y", "rotationRate.z",
            "userAcceleration.x", "userAcceleration.y", "userAcceleration.z")
CHANNELS = (recording.ACC_CHANNELS + recording.GYR_CHANNELS
            + ("attitude_roll", "attitude_pitch", "attitude_yaw",
               "gravity_x", "gravity_y", "gravity_z", "user_acc_x", "user_acc_y", "user_acc_z"))
ACCELEROMETER_MODES = ("specific_force", "core_motion", "user_acceleration")
ACC_UNIT = "g"
GYR_UNIT = "rad/s"
SENSOR = "front trouser pocket, upper thigh (iPhone 6s)"

_TRIAL_FOLDER = re.compile(r"^([A-Za-z]+)_(\d+)$")
_SUBJECT_FILE = re.compile(r"^sub_(\d+)\.csv$")


def _is_hidden(name: str) -> bool:
  return name.startswith(".") or name == "__MACOSX"


def find_data_dir(path: str) -> str:
  """The folder holding the <activity>_<trial> folders: `path`, or A_DeviceMotion_data below it
  (once or, as in the Kaggle copy, twice)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: MotionSense folder not found (expected "
                            f"{DATA_DIR}/<activity>_<trial>/sub_<n>.csv)")
  for candidate in (path, os.path.join(path, DATA_DIR), os.path.join(path, DATA_DIR, DATA_DIR)):
    if os.path.isdir(candidate) and any(
        _TRIAL_FOLDER.match(e) and os.path.isdir(os.path.join(candidate, e))
        for e in os.listdir(candidate)):
      return candidate
  raise FileNotFoundError(f"{path}: no <activity>_<trial> folders (e.g. dws_1) here, in "
                          f"{DATA_DIR}/ or in {DATA_DIR}/{DATA_DIR}/")


def list_files(data_dir: str, selected: tuple[str, ...], skipped: dict
                ) -> list[tuple[int, int, str, str]]:
  """(trial, subject, activity, path) of every selected CSV, sorted by trial then subject."""
  files = []
  for folder in sorted(os.listdir(data_dir)):
    folder_path = os.path.join(data_dir, folder)
    if _is_hidden(folder):
      skipped["hidden"] += 1
      continue
    if not os.path.isdir(folder_path):
      skipped["other_files"] += 1
      continue
    match = _TRIAL_FOLDER.match(folder)
    if not match or match.group(1) not in ACTIVITIES:
      raise ValueError(f"{folder_path}: not an <activity>_<trial> folder of a known activity "
                       f"{list(ACTIVITIES)}")
    activity, trial = match.group(1), int(match.group(2))
    if trial not in ACTIVITIES[activity][1]:
      raise ValueError(f"{folder_path}: trial {trial} is not an official {activity} trial "
                       f"{list(ACTIVITIES[activity][1])}")
    for name in sorted(os.listdir(folder_path)):
      file_path = os.path.join(folder_path, name)
      if _is_hidden(name):
        skipped["hidden"] += 1
        continue
      match = _SUBJECT_FILE.match(name)
      if not match or not os.path.isfile(file_path):
        raise ValueError(f"{file_path}: expected only sub_<n>.csv files in {folder_path}")
      if activity not in selected:
        skipped["unselected_files"] += 1
        continue
      files.append((trial, int(match.group(1)), activity, file_path))
  return sorted(files)


def read_csv(path: str) -> np.ndarray:
  """[T, 12] float64 in FEATURES order; errors name the file (and line, column)."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    header = next(csv.reader(f), None)
  if not header:
    raise ValueError(f"{path}: empty file (expected a header row and data rows)")
  header = [h.strip() for h in header]
  missing = [c for c in FEATURES if header.count(c) != 1]
  if missing:
    raise ValueError(f"{path}: header lacks (or repeats) columns {missing}; header is {header}")
  try:
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, comments=None,
                       encoding="utf-8-sig")
  except ValueError as e:
    where = recording.first_bad_line(path, len(header), delimiter=",", skip=1)
    raise ValueError(f"{path}: {where or e}") from e
  if table.shape[0] == 0:
    raise ValueError(f"{path}: no data rows below the header")
  if table.shape[1] != len(header):
    raise ValueError(f"{path}: rows have {table.shape[1]} fields, the header {len(header)}")
  columns = table[:, [header.index(c) for c in FEATURES]]
  bad = ~np.isfinite(columns)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(f"{path}: data row {row + 1}, column {FEATURES[col]!r}: non-finite "
                     f"value {columns[row, col]}")
  return columns


def channels(columns: np.ndarray, accelerometer: str) -> np.ndarray:
  """[T, 15] in CHANNELS order from the FEATURES columns (module docstring for the sign)."""
  attitude, gravity = columns[:, 0:3], columns[:, 3:6]
  rotation, user = columns[:, 6:9], columns[:, 9:12]
  if accelerometer == "specific_force":
    acc = -(gravity + user)
  elif accelerometer == "core_motion":
    acc = gravity + user
  else:
    acc = -user
  return np.concatenate([acc, rotation, attitude, gravity, user], axis=1)
