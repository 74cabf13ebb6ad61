"""MyoGym (Koskimäki, Siirtola & Röning, UbiComp/ISWC 2017 adjunct) -> `Recordings`.

MyoGym.mat's layout, units (acc in g, gyro in deg/s, reported as stored) and clock are read by
`mujo_jax.sources.myogym` (its docstring has the sources). With drop_repeated_imu=True
(default) rows that repeat the previous row's IMU sample are dropped, counted in notes, so the
remaining rows are the 50 Hz IMU stream. Recordings: one per contiguous run of a person, split
where the accelerometer timestamp steps back or jumps by more than max_gap_s. No official split:
splits=None.
"""

from __future__ import annotations

import numpy as np

from mujo_jax.sources import myogym
from mujo_jax.sources import recording as recording_lib

CLASS_NAMES = myogym.CLASS_NAMES


def load(path: str, drop_repeated_imu: bool = True, max_gap_s: float = 1.0
         ) -> recording_lib.Recordings:
  """Reads MyoGym.mat (`path` is the file or a folder holding it); see the module docstring.

  drop_repeated_imu: drop rows that repeat the previous row's IMU sample (counted in notes).
  max_gap_s: a timestamp jump longer than this starts a new recording.
  """
  if not max_gap_s > 0:
    raise ValueError(f"myogym: max_gap_s must be > 0, got {max_gap_s}")
  mat_path = myogym.find_file(path)
  data, labels = myogym.read_mat(mat_path)
  exercise, person = labels[:, 0], labels[:, 1]
  n_rows = len(data)
  notes = []
  keep = np.ones(n_rows, bool)
  if drop_repeated_imu:
    keep = ~myogym.repeated_imu_rows(data, person)
    dropped = int(n_rows - keep.sum())
    notes.append(f"dropped {dropped} of {n_rows} rows ({100 * dropped / n_rows:.1f}%) that "
                 f"repeat the previous row's IMU sample (same timestamps and values); the rest "
                 f"is the {myogym.SAMPLE_RATE_HZ:g} Hz IMU stream")
  else:
    notes.append("rows that repeat the previous IMU sample are kept (drop_repeated_imu=False): "
                 f"the rows come faster than {myogym.SAMPLE_RATE_HZ:g} Hz, so time is stretched")
  data, exercise, person = data[keep], exercise[keep], person[keep]
  recording, split_notes = myogym.recording_ids(data[:, myogym.ACC_TIME], person, max_gap_s)
  notes += split_notes
  y = np.where(exercise == myogym.NULL_LABEL, -1, exercise - 1).astype(np.int32)
  notes += [f"label {myogym.NULL_LABEL} (null) -> unlabelled ({int((y < 0).sum())} of {len(y)} "
            "samples)",
            "emg_* are the EMG values on the rows kept, not a uniformly sampled EMG stream",
            "raw_data has no orientation or magnetometer; the precomputed features_* keys are "
            "not used"]
  x = data[:, myogym.ACC_COLUMNS + myogym.GYR_COLUMNS + myogym.EMG_COLUMNS]
  return recording_lib.Recordings(
      x=x.astype(np.float32), y=y, subject=person.astype(np.int32), recording=recording,
      class_names=CLASS_NAMES, channel_names=myogym.CHANNELS,
      sample_rate_hz=myogym.SAMPLE_RATE_HZ, acc_unit=myogym.ACC_UNIT, gyr_unit=myogym.GYR_UNIT,
      acc_includes_gravity=True, splits=None, name="myogym", sensor=myogym.SENSOR,
      notes=tuple(notes))
