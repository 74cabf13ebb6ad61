"""UTD-MHAD (Chen, Jafari & Kehtarnavaz, ICIP 2015) inertial data -> `Recordings`.

On-disk layout: the official one that `mujo_jax.sources.utd_mhad` reads (its docstring has the
details), Inertial/aA_sS_tT_inertial.mat next to Skeleton/aA_sS_tT_skeleton.mat. We reuse its
`list_trials`, which pairs the two folders, so both must be present (a trial whose skeleton file
is missing is skipped with a warning there); only the inertial files are read.

One recording per trial: 27 actions, 8 subjects, 4 trials each (861 exist), 2-6.5 s each, from
one inertial sensor at 50 Hz worn on the right wrist for actions 1-21 and on the right thigh for
actions 22-27. So the sensor position differs by class; `sensor` and `notes` say so, and
`sensor="wrist"` / `"thigh"` keep one position (and its classes, re-indexed from 0). The short
trials are delivered whole; the common windowing pads or drops them.

Units: `utd_mhad.load_inertial` converts the stored g and deg/s to m/s^2 (gravity included) and
rad/s. Split: the cross-subject protocol of `utd_mhad.SUBJECT_SPLITS` (train 1, 3, 5; val 7;
test 2, 4, 6, 8). Recording ids read as the trial: action * 10000 + subject * 100 + trial.

Sensor frame: the device's axes are not the simulator's (`mujo_jax.sim.virtual_imu`: x along
the segment, y to the body's left, z forward at rest). `sensor_frame="simulator"` turns each
reading (acc and gyro alike) by one fixed rotation per location, SIMULATOR_FROM_DEVICE, so
that a tower pretrained on simulated sensors sees the real one in the frame it learned: the
mounting calibration a wearable's user knows. The rotations were fitted (Kabsch) on the
training subjects 1, 3, 5 by `data_prep/transfer_gap.py`, from their real readings against
the same trials simulated from the Kinect skeleton (no labels); fitted per subject they agree
within 4-20 degrees. The wrist device is turned ~156 degrees (y and z flipped), the thigh
device ~100 degrees.
"""

from __future__ import annotations

import os

import numpy as np

from mujo_jax.sources import recording
from mujo_jax.sources import utd_mhad

SAMPLE_RATE_HZ = utd_mhad.INERTIAL_HZ
CHANNELS = recording.ACC_CHANNELS + recording.GYR_CHANNELS
# Short names, in action order (1-based action a -> CLASS_NAMES[a - 1]), after the labels on the
# dataset's web page (swipe_left, ..., sit2stand, ...) written as words; utd_mhad.ACTIONS has
# the full descriptions that `class_prompts` uses.
CLASS_NAMES = (
    "swipe left", "swipe right", "wave", "clap", "throw", "arm cross", "basketball shoot",
    "draw x", "draw circle clockwise", "draw circle counter-clockwise", "draw triangle",
    "bowling", "boxing", "baseball swing", "tennis swing", "arm curl", "tennis serve", "push",
    "knock", "catch", "pickup and throw", "jog", "walk", "sit to stand", "stand to sit", "lunge",
    "squat")
assert len(CLASS_NAMES) == len(utd_mhad.ACTIONS)
LAST_WRIST_ACTION = utd_mhad.LAST_WRIST_ACTION
# sensor option -> (1-based actions kept, where the sensor was worn).
SENSORS: dict[str, tuple[range, str]] = {
    "all": (range(1, len(CLASS_NAMES) + 1),
            f"right wrist (actions 1-{LAST_WRIST_ACTION}) or right thigh (actions "
            f"{LAST_WRIST_ACTION + 1}-{len(CLASS_NAMES)}), one inertial sensor per trial"),
    "wrist": (range(1, LAST_WRIST_ACTION + 1), "right wrist"),
    "thigh": (range(LAST_WRIST_ACTION + 1, len(CLASS_NAMES) + 1), "right thigh"),
}


# Location -> R with reading_simulator = R @ reading_device (module docstring).
SIMULATOR_FROM_DEVICE = {
    "right_wrist": ((0.9632, 0.1225, -0.2393), (0.2111, -0.8957, 0.3913),
                    (-0.1664, -0.4274, -0.8886)),
    "right_thigh": ((0.9270, 0.1910, -0.3229), (0.3464, -0.1054, 0.9322),
                    (0.1440, -0.9759, -0.1638)),
}
SENSOR_FRAMES = ("device", "simulator")


def to_simulator_frame(inertial: np.ndarray, location: str) -> np.ndarray:
  """[T, 6] acc, gyro in the device's axes -> the simulator's axes at `location`."""
  u, _, vt = np.linalg.svd(np.asarray(SIMULATOR_FROM_DEVICE[location]))  # exactly orthonormal
  r = (u @ vt).astype(inertial.dtype)
  return np.concatenate([inertial[:, :3] @ r.T, inertial[:, 3:] @ r.T], axis=1)


def load(path: str, sensor: str = "all", subjects=None,
         sensor_frame: str = "device") -> recording.Recordings:
  """Reads the UTD-MHAD trials under `path` (see the module docstring).

  sensor: "all" (default: every action, each trial's own sensor), "wrist" (actions 1-21) or
    "thigh" (actions 22-27); y = the action's index among the kept actions.
  subjects: subject numbers to keep (e.g. (1, 2) for a quick look); None: all. The official
    split keeps only the kept subjects; if that leaves no train or no test subject, splits is
    None (the protocol then draws a seeded subject split) and a note says so.
  """
  if sensor not in SENSORS:
    raise ValueError(f"utd_mhad: sensor={sensor!r}; choose from {list(SENSORS)}")
  if sensor_frame not in SENSOR_FRAMES:
    raise ValueError(f"utd_mhad: sensor_frame={sensor_frame!r}; choose from {SENSOR_FRAMES}")
  actions, where = SENSORS[sensor]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: UTD-MHAD folder not found (expected "
                            f"{utd_mhad.INERTIAL_DIR}/ and {utd_mhad.SKELETON_DIR}/ in it)")
  unpaired: list[str] = []
  trials = utd_mhad.list_trials(path, unpaired)
  present = sorted({t.subject for t in trials})
  if subjects is not None:
    wanted = sorted({int(s) for s in subjects})
    absent = [s for s in wanted if s not in present]
    if absent or not wanted:
      raise ValueError(f"utd_mhad: subjects={list(subjects)}: no trials of subject(s) {absent} "
                       f"under {path} (present: {present})")
    trials = [t for t in trials if t.subject in wanted]
  trials = [t for t in trials if t.action in actions]
  if not trials:
    raise ValueError(f"{path}: no UTD-MHAD trials for sensor={sensor!r}")

  xs, ys, subject_ids, recording_ids = [], [], [], []
  for trial in trials:
    inertial = utd_mhad.load_inertial(trial)   # [T, 6] m/s^2, rad/s; errors name the file
    if sensor_frame == "simulator":
      inertial = to_simulator_frame(inertial, trial.sensor_location)
    n = len(inertial)
    xs.append(inertial.astype(np.float32))
    ys.append(np.full(n, trial.action - actions.start, np.int32))
    subject_ids.append(np.full(n, trial.subject, np.int32))
    recording_ids.append(np.full(n, trial_id(trial), np.int32))
  subject = np.concatenate(subject_ids)
  kept = set(np.unique(subject).tolist())
  splits = {name: tuple(s for s in ids if s in kept)
            for name, ids in utd_mhad.SUBJECT_SPLITS.items()}
  splits = {name: ids for name, ids in splits.items() if ids}
  notes = [f"{len(trials)} recordings (one per trial), subjects {sorted(kept)}",
           "sensor moves with the class: right wrist for actions 1-21, right thigh for actions "
           "22-27" if sensor == "all" else f"{where} sensor only: actions "
           f"{actions.start}-{actions.stop - 1}, re-indexed from 0",
           "units converted on reading by mujo_jax.sources.utd_mhad.load_inertial (stored in g "
           "and deg/s)"]
  if sensor_frame == "simulator":
    notes.append("readings turned into the simulator's sensor frame "
                 "(utd_mhad.SIMULATOR_FROM_DEVICE, fitted on training subjects without labels)")
  if not (splits.get("train") and splits.get("test")):
    notes.append(f"official split {dict(utd_mhad.SUBJECT_SPLITS)} has no train or no test "
                 f"subject among {sorted(kept)}: splits=None")
    splits = None
  if unpaired:
    notes.append(f"skipped {len(unpaired)} files without a counterpart: {unpaired[:3]}")
  return recording.Recordings(
      x=np.concatenate(xs), y=np.concatenate(ys), subject=subject,
      recording=np.concatenate(recording_ids),
      class_names=tuple(CLASS_NAMES[a - 1] for a in actions), channel_names=CHANNELS,
      sample_rate_hz=SAMPLE_RATE_HZ, acc_unit="m/s^2", gyr_unit="rad/s",
      acc_includes_gravity=True, splits=splits, name="utd_mhad", sensor=where,
      notes=tuple(notes))


def trial_id(trial: utd_mhad.Trial) -> int:
  """The recording id of a trial, readable as aAAsSStTT: a27_s3_t4 -> 270304."""
  return trial.action * 10000 + trial.subject * 100 + trial.trial


def class_prompts(class_names) -> list[str]:
  """Zero-shot prompts from the dataset's own action descriptions: the short names alone are
  ambiguous ("push", "catch"); "a person doing right hand catch an object" is not."""
  descriptions = dict(zip(CLASS_NAMES, utd_mhad.ACTIONS))
  return [f"a person doing {descriptions[c]}" if c in descriptions else f"a person doing {c}"
          for c in class_names]
