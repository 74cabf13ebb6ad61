"""MotionSense (Malekzadeh et al.) Device Motion data -> `Recordings`.

The official layout (A_DeviceMotion_data/<activity>_<trial>/sub_<subject>.csv), Core Motion's
units and the sign of its acceleration are read by `mujo_jax.sources.motionsense` (its
docstring has the sources). acc is in g and specific force by default (-(gravity +
userAcceleration), the encoder's convention), gyr in rad/s; the files carry no timestamps (50 Hz
as published). No official split: splits=None.

Channels: acc_x..z and gyr_x..z (used downstream), then the stored columns unchanged:
attitude_roll/pitch/yaw (rad), gravity_x..z and user_acc_x..z (g, Core Motion sign).
Recording ids: one per CSV file, numbered in (trial, subject) order.
"""

from __future__ import annotations

import numpy as np

from mujo_jax.sources import motionsense
from mujo_jax.sources import recording

ACTIVITIES = motionsense.ACTIVITIES


def load(path: str, activities=None, accelerometer: str = "specific_force"
         ) -> recording.Recordings:
  """Reads MotionSense's A_DeviceMotion_data under `path` (see the module docstring).

  activities: subset of activity codes (e.g. ("dws", "ups", "wlk", "jog"), the paper's 4-class
    task); class_names follow ACTIVITIES' order. Files of other activities are skipped and
    counted in notes. None: all six.
  accelerometer: "specific_force" (default) -(gravity + userAcceleration), gravity included;
    "core_motion" gravity + userAcceleration as Core Motion signs it; "user_acceleration"
    -userAcceleration, without gravity (acc_includes_gravity=False).
  """
  selected = _selected_activities(activities)
  if accelerometer not in motionsense.ACCELEROMETER_MODES:
    raise ValueError(f"motionsense: accelerometer={accelerometer!r}; allowed: "
                     f"{motionsense.ACCELEROMETER_MODES}")
  data_dir = motionsense.find_data_dir(path)
  skipped = {"hidden": 0, "other_files": 0, "unselected_files": 0}
  files = motionsense.list_files(data_dir, selected, skipped)
  if not files:
    raise ValueError(f"{data_dir}: no sub_<n>.csv files for activities {list(selected)}")
  xs, ys, subjects, recording_ids = [], [], [], []
  for recording_id, (trial, subject, activity, file_path) in enumerate(files):
    columns = motionsense.read_csv(file_path)
    xs.append(motionsense.channels(columns, accelerometer))
    n = len(columns)
    ys.append(np.full(n, selected.index(activity), np.int32))
    subjects.append(np.full(n, subject, np.int32))
    recording_ids.append(np.full(n, recording_id, np.int32))
  notes = [_accelerometer_note(accelerometer),
           f"sample rate {motionsense.SAMPLE_RATE_HZ:g} Hz as published; the files carry no "
           "timestamps",
           f"{len(files)} recordings (one per CSV file)"]
  if skipped["unselected_files"]:
    notes.append(f"skipped {skipped['unselected_files']} files of activities not selected "
                 f"(kept {list(selected)})")
  if skipped["hidden"] or skipped["other_files"]:
    notes.append(f"ignored {skipped['hidden']} hidden entries and {skipped['other_files']} "
                 f"files that are not trial folders in {data_dir}")
  return recording.Recordings(
      x=np.concatenate(xs).astype(np.float32), y=np.concatenate(ys),
      subject=np.concatenate(subjects), recording=np.concatenate(recording_ids),
      class_names=tuple(ACTIVITIES[a][0] for a in selected), channel_names=motionsense.CHANNELS,
      sample_rate_hz=motionsense.SAMPLE_RATE_HZ, acc_unit=motionsense.ACC_UNIT,
      gyr_unit=motionsense.GYR_UNIT,
      acc_includes_gravity=accelerometer != "user_acceleration", splits=None,
      name="motionsense", sensor=motionsense.SENSOR, notes=tuple(notes))


PROMPTS = {"downstairs": "a person walking downstairs", "upstairs": "a person walking upstairs",
           "walking": "a person walking", "jogging": "a person jogging",
           "standing": "a person standing", "sitting": "a person sitting"}


def class_prompts(class_names) -> list[str]:
  """Zero-shot prompts that read as English ("a person doing downstairs" would not)."""
  return [PROMPTS.get(c, f"a person doing {c}") for c in class_names]


def _selected_activities(activities) -> tuple[str, ...]:
  if activities is None:
    return tuple(ACTIVITIES)
  if isinstance(activities, str):
    activities = (activities,)
  unknown = [a for a in activities if a not in ACTIVITIES]
  if unknown or not activities:
    raise ValueError(f"motionsense: activities={list(activities)}; choose from "
                     f"{list(ACTIVITIES)}")
  return tuple(a for a in ACTIVITIES if a in activities)


def _accelerometer_note(accelerometer: str) -> str:
  if accelerometer == "specific_force":
    return ("acc = -(gravity + userAcceleration): Core Motion signs acceleration opposite to "
            "specific force (face up reads -1 g); flipped to the encoder's convention")
  if accelerometer == "core_motion":
    return ("acc = gravity + userAcceleration with Core Motion's sign (opposite to specific "
            "force, the encoder's convention)")
  return "acc = -userAcceleration: gravity removed by Core Motion's sensor fusion"
