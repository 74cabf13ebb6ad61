"""MHEALTH (Banos et al., UCI dataset 319) -> `Recordings`.

The official layout, its columns and units are read by `mujo_jax.sources.mhealth` (from the
dataset README): 50 Hz, acceleration in m/s^2, gyroscope in deg/s, reported as stored. 10
subjects, no official split: splits=None. Label 0 (null) -> y = -1.

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

import numpy as np

from mujo_jax.sources import mhealth
from mujo_jax.sources import recording

CLASS_NAMES = mhealth.CLASS_NAMES


def load(path: str, sensor: str = "right_lower_arm") -> recording.Recordings:
  """Reads the mHealth_subject<N>.log files in `path` (or `path`/MHEALTHDATASET).

  sensor: "right_lower_arm" (default, the wrist), "left_ankle" or "chest" (no gyroscope).
  """
  if sensor not in mhealth.SENSORS:
    raise ValueError(f"mhealth: sensor={sensor!r}; choose from {list(mhealth.SENSORS)}")
  columns, where = mhealth.SENSORS[sensor]
  files = mhealth.list_files(path)
  xs, ys, subjects, recording_ids = [], [], [], []
  for recording_id, (subject, file_path) in enumerate(files):
    table = mhealth.read_log(file_path, used=list(columns.values()))
    xs.append(table[:, list(columns.values())])
    labels = table[:, mhealth.LABEL_COLUMN].astype(np.int32)
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
    gyr = x[:, [list(columns).index(c) for c in recording.GYR_CHANNELS]]
    speed = np.linalg.norm(gyr[y >= 0] if (y >= 0).any() else gyr, axis=1)
    notes.append(f"gyroscope unit deg/s per the dataset README (unverified); 99th percentile "
                 f"of |gyr| over labelled samples: {np.percentile(speed, 99):.3g}")
  return recording.Recordings(
      x=x.astype(np.float32), y=y, subject=np.concatenate(subjects),
      recording=np.concatenate(recording_ids), class_names=CLASS_NAMES,
      channel_names=tuple(columns), sample_rate_hz=mhealth.SAMPLE_RATE_HZ,
      acc_unit=mhealth.ACC_UNIT, gyr_unit=mhealth.GYR_UNIT, acc_includes_gravity=True, splits=None,
      name="mhealth", sensor=where, notes=tuple(notes))


PROMPTS = dict(zip(CLASS_NAMES, (
    "a person standing still", "a person sitting and relaxing", "a person lying down",
    "a person walking", "a person climbing stairs", "a person bending the waist forward",
    "a person raising both arms in front", "a person bending the knees, crouching",
    "a person cycling", "a person jogging", "a person running",
    "a person jumping forward and back")))


def class_prompts(class_names) -> list[str]:
  """Zero-shot prompts that read as English ("a person doing standing still" would not)."""
  return [PROMPTS.get(c, f"a person doing {c}") for c in class_names]
