"""MM-Fit (Stromback et al., IMWUT 2020) smartwatch IMU -> `Recordings`.

On-disk layout, units and clock: the official ones, as `mujo_jax.sources.mmfit` reads them (its
docstring has the sources). Per workout folder wXX we read
  wXX_{device}_acc.npy, wXX_{device}_gyr.npy  (N, 5): frame, timestamp (ms), x, y, z; ~100 Hz
  wXX_labels.csv                              start_frame, end_frame, reps, exercise; no header
with device sw_l / sw_r, the smartwatch on the left / right wrist. The labels may live in a
separate tree with the same wXX/ folders (`labels_dir`, like convert_mmfit's --labels_dir).

From mujo_jax.sources.mmfit: `read_labels`, `load_stream`, the unit checks of `imu_units`,
`frame_clock` and `sample_labels`; from mujo_jax.sources.resampling: `resample_stream`, `grid`.

  * Units are reported as stored, not converted: acc "m/s^2" or "g" as imu_units' check of the
    median |acc| finds it (~9.8 or ~1; anything else raises naming the file), gyr the
    `gyr_unit` option (default rad/s, the Android sensor API's unit), checked by imu_units (a 99.9th
    percentile above 35 rad/s raises). Should workouts disagree on the acc unit, the "g" ones are
    scaled to m/s^2 and a note says so (one unit per `Recordings`).
  * Rate: the watch streams are timestamped, not uniformly sampled, and acc and gyr have their
    own timestamps, so both are put (`resampling.resample_stream`; at equal rates that is a
    linear interpolation, no filtering) onto one uniform grid at the nominal 100 Hz over the time
    both cover. 100 Hz is
    used only after each stream's median sample interval confirms it (within 5%; otherwise a
    ValueError names the file). Regular samples on the grid come back unchanged. Where a stream
    has a gap longer than `max_gap_s` the grid has no data: the workout is cut there into
    separate recordings (windows never cross a gap).
  * Labels: per sample, the exercise of the set whose time span [start_frame, end_frame + 1)
    contains it, else -1 (MM-Fit's "non_activity"). Frame numbers are not a clock (the camera's
    frame period varies); a frame's time comes from the sensor rows associated with it
    (`frame_clock` of the chosen device's acc stream), as convert_mmfit times its labels.
  * Classes: mmfit.CLASS_NAMES (motion.EXERCISES order, MM-Fit's "bicep_curls" named
    "dumbbell_biceps_curls"), so a label index means the same exercise as in the records
    convert_mmfit writes for pretraining. MM-Fit's own code orders them squats, lunges,
    bicep_curls, situps, pushups, tricep_extensions, dumbbell_rows, jumping_jacks,
    dumbbell_shoulder_press, lateral_shoulder_raises (train_multimodal_ar.py ACTIONS).
  * Subjects: MM-Fit's files carry no subject ids (convert_mmfit reads none; the label files
    and sensor arrays have none), so subject = the workout number (w07 -> 7). Several workouts
    come from one person, so a seeded "subject" split would not be subject-disjoint; the
    official workout split is therefore always given.
  * Splits (mmfit.SPLITS, MM-Fit's train_multimodal_ar.py): train w01-w04, w06-w08,
    w16-w18; val w14, w15, w19; test w09-w11 (workouts of training subjects); unseen_test w00,
    w05, w12, w13, w20 (subjects absent from training; MM-Fit's --unseen_test_set). Our `test`
    split is `test_split`: "unseen_test" by default, because the downstream protocol evaluates
    on unseen subjects for every other dataset and only this set keeps that promise here;
    "test" gives MM-Fit's default test set, "both" the two together. Workouts of the other test
    set are not read.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mujo_jax.sources import mmfit
from mujo_jax.sources import recording
from mujo_jax.sources import resampling
from mujo_jax import units

NOMINAL_RATE_HZ = mmfit.SMARTWATCH_RATE_HZ
RATE_TOLERANCE = 0.05     # measured median rate must be within 5% of the nominal
DEVICES = {"sw_l": "left wrist (smartwatch, Mobvoi TicWatch Pro)",
           "sw_r": "right wrist (smartwatch, Mobvoi TicWatch Pro)"}
TEST_SPLITS = {"unseen_test": ("unseen_test",), "test": ("test",),
               "both": ("test", "unseen_test")}
CLASS_NAMES = mmfit.CLASS_NAMES
CHANNELS = recording.ACC_CHANNELS + recording.GYR_CHANNELS
GYR_UNITS = mmfit.GYR_UNITS


@dataclasses.dataclass
class Workout:
  """One workout as read: its gap-free runs of samples and their labels."""
  name: str
  runs: list[np.ndarray]      # x [n, 6]: acc xyz (acc_unit), gyr xyz, on the 100 Hz grid
  labels: list[np.ndarray]    # y [n] per run
  acc_unit: str               # "m/s^2" or "g", as stored
  acc_rate_hz: float          # measured median rate of the acc stream


def load(path: str, device: str = "sw_l", test_split: str = "unseen_test", workouts=None,
         labels_dir: str | None = None, skip_missing: bool = False, gyr_unit: str = "rad/s",
         max_gap_s: float = 0.3) -> recording.Recordings:
  """Reads MM-Fit's wXX/ folders under `path` (see the module docstring).

  device: "sw_l" (default, left wrist) or "sw_r".
  test_split: "unseen_test" (default), "test" or "both": which official test workouts form the
    `test` split (module docstring).
  workouts: e.g. ("w01", "w14"), a subset of the workouts of train, val and the chosen test
    split; None: all of them.
  labels_dir: root of wXX/wXX_labels.csv when not under `path`.
  skip_missing: False (default): a missing file of a requested workout raises naming it; True:
    such workouts are skipped and listed in notes.
  gyr_unit: the unit the gyr files are in ("rad/s" default, or "deg/s"); reported, not converted.
  max_gap_s: a longer gap between samples of a stream cuts the recording there.
  """
  if device not in DEVICES:
    raise ValueError(f"mmfit: device={device!r}; choose from {list(DEVICES)}")
  if test_split not in TEST_SPLITS:
    raise ValueError(f"mmfit: test_split={test_split!r}; choose from {list(TEST_SPLITS)}")
  if gyr_unit not in GYR_UNITS:
    raise ValueError(f"mmfit: gyr_unit={gyr_unit!r}; choose from {GYR_UNITS}")
  if not max_gap_s > 0:
    raise ValueError(f"mmfit: max_gap_s={max_gap_s!r} must be > 0")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: MM-Fit folder not found (expected wXX/ workout folders)")
  if labels_dir is not None and not os.path.isdir(labels_dir):
    raise FileNotFoundError(f"{labels_dir}: MM-Fit labels folder not found (labels_dir)")
  owner = {w: split for split in ("train", "val") + TEST_SPLITS[test_split]
           for w in mmfit.SPLITS[split]}
  if isinstance(workouts, str):
    workouts = [workouts]
  requested = sorted(owner) if workouts is None else sorted(set(workouts))
  unknown = [w for w in requested if w not in owner]
  if unknown or not requested:
    raise ValueError(f"mmfit: workouts={workouts!r}: {unknown} not in the train, val or "
                     f"{test_split} workouts {sorted(owner)}")

  missing, loaded = {}, []
  for workout in requested:
    files = workout_files(path, labels_dir, workout, device)
    absent = [p for p in files.values() if not os.path.isfile(p)]
    if absent and not skip_missing:
      raise FileNotFoundError(f"{absent[0]}: not found (MM-Fit workout {workout}, device "
                              f"{device}; skip_missing=True skips such workouts)")
    if absent:
      missing[workout] = absent
      continue
    loaded.append(read_workout(workout, files, gyr_unit, max_gap_s))
  if not loaded:
    raise FileNotFoundError(f"{path}: none of the workouts {requested} has all its files "
                            f"(first missing: {next(iter(missing.values()))[0]})")

  acc_units = sorted({w.acc_unit for w in loaded})
  acc_unit = acc_units[0] if len(acc_units) == 1 else "m/s^2"
  xs, ys, subjects, recording_ids = [], [], [], []
  for workout in loaded:
    for x, y in zip(workout.runs, workout.labels):
      if workout.acc_unit != acc_unit:
        x[:, :3] *= units.STANDARD_GRAVITY
      xs.append(x.astype(np.float32))
      ys.append(y)
      subjects.append(np.full(len(x), workout_number(workout.name), np.int32))
      recording_ids.append(np.full(len(x), len(recording_ids), np.int32))
  gaps = sum(len(w.runs) - 1 for w in loaded)
  present = [w.name for w in loaded]
  splits = {}
  for workout in present:
    name = "test" if owner[workout] in TEST_SPLITS["both"] else owner[workout]
    splits.setdefault(name, []).append(workout_number(workout))
  splits = {name: tuple(ids) for name, ids in splits.items()}
  rates = ", ".join(f"{w.name} {w.acc_rate_hz:.1f}" for w in loaded)
  notes = [f"{len(present)} workouts {present}, device {device}; subject = workout number "
           "(MM-Fit publishes no subject ids)",
           f"test split = MM-Fit's {' + '.join(TEST_SPLITS[test_split])} workouts",
           f"acc and gyr linearly interpolated from their timestamps onto a uniform "
           f"{NOMINAL_RATE_HZ:g} Hz grid; measured median acc rates (Hz): {rates}",
           f"acc unit {acc_unit} as stored (checked from median |acc|); gyr unit {gyr_unit} "
           "as given (checked: 99.9th percentile below 35 rad/s)"]
  if len(acc_units) > 1:
    notes.append(f"workouts disagree on the acc unit: those in g were scaled to m/s^2 "
                 f"({', '.join(f'{w.name} {w.acc_unit}' for w in loaded)})")
  if gaps:
    notes.append(f"{gaps} gap(s) longer than {max_gap_s:g} s cut workouts into separate "
                 "recordings")
  if missing:
    notes.append("skipped workouts with missing files (skip_missing=True): "
                 + "; ".join(f"{w}: {', '.join(os.path.basename(p) for p in ps)}"
                             for w, ps in missing.items()))
  if not (splits.get("train") and splits.get("test")):
    notes.append(f"no train or no test workout among {present}: splits=None (a seeded split of "
                 "workouts is not subject-disjoint)")
    splits = None
  return recording.Recordings(
      x=np.concatenate(xs), y=np.concatenate(ys), subject=np.concatenate(subjects),
      recording=np.concatenate(recording_ids), class_names=CLASS_NAMES, channel_names=CHANNELS,
      sample_rate_hz=NOMINAL_RATE_HZ, acc_unit=acc_unit, gyr_unit=gyr_unit,
      acc_includes_gravity=True, splits=splits, name="mmfit", sensor=DEVICES[device],
      notes=tuple(notes))


def workout_number(workout: str) -> int:
  return int(workout[1:])


def workout_files(path: str, labels_dir: str | None, workout: str, device: str) -> dict:
  """The three files one workout needs (the pose, which convert_mmfit requires, is not read)."""
  return {"acc": mmfit.file_path(path, workout, f"{device}_acc"),
          "gyr": mmfit.file_path(path, workout, f"{device}_gyr"),
          "labels": mmfit.file_path(path, workout, "labels", labels_dir)}


def read_workout(workout: str, files: dict, gyr_unit: str, max_gap_s: float) -> Workout:
  """One workout's streams on the 100 Hz grid, cut at gaps, labelled per sample."""
  acc = mmfit.load_stream(workout, files["acc"])   # sorted by time; errors name the file
  gyr = mmfit.load_stream(workout, files["gyr"])
  # Checks only: the values stay in their stored units (module docstring).
  _, _, acc_unit = mmfit.imu_units(workout, acc, gyr, (files["acc"], files["gyr"]), gyr_unit,
                                   gyr_option=f"the gyr_unit= option, now {gyr_unit!r}")
  rate = {kind: _confirm_rate(workout, files[kind], stream)
          for kind, stream in (("acc", acc), ("gyr", gyr))}
  t0_ms = max(acc[0, 1], gyr[0, 1])
  t_end_ms = min(acc[-1, 1], gyr[-1, 1])
  if t_end_ms <= t0_ms:
    raise ValueError(f"{files['gyr']}: does not overlap in time with {files['acc']}")
  t_grid = resampling.grid((t_end_ms - t0_ms) / 1000.0, NOMINAL_RATE_HZ)
  x = np.concatenate([
      resampling.resample_stream((s[:, 1] - t0_ms) / 1000.0, s[:, 2:], t_grid, max_gap_s)
      for s in (acc, gyr)], axis=1)
  y = mmfit.sample_labels(mmfit.read_labels(files["labels"]), mmfit.frame_clock(acc),
                          t0_ms + 1000.0 * t_grid)
  usable = np.isfinite(x).all(axis=1)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], usable.astype(np.int8), [0]])))
  runs = [slice(a, b) for a, b in zip(edges[::2], edges[1::2])]
  if not runs:
    raise ValueError(f"{files['acc']}: no time where acc and gyr both have samples less than "
                     f"max_gap_s={max_gap_s:g} s apart")
  return Workout(workout, [x[r] for r in runs], [y[r] for r in runs], acc_unit, rate["acc"])


def _confirm_rate(workout: str, path: str, stream: np.ndarray) -> float:
  """The stream's median sample rate (Hz); raises naming the file unless it is ~100 Hz."""
  rate = mmfit.median_rate_hz(stream)
  if abs(rate / NOMINAL_RATE_HZ - 1) > RATE_TOLERANCE:
    raise ValueError(f"{path}: median sample rate {rate:.3g} Hz from the timestamps (workout "
                     f"{workout}), expected the smartwatch's {NOMINAL_RATE_HZ:g} Hz")
  return rate
