r"""Converts MM-Fit (real smartwatch IMU, estimated 3D pose, exercise labels) to the record format.

  python -m data_prep.convert_mmfit --mmfit_dir=/data/mm-fit --out_dir=/data/mmfit_records \
      [--labels_dir=../shared/data/mmfit_labels] [--workouts=w01,w14] [--unlabelled=keep] \
      [--simulated_locations=true] [--workers=N]

MM-Fit's official layout, one folder per workout wXX (Stromback et al., IMWUT 2020). Sources:
[EDA] KDMStromback/mm-fit EDA.ipynb, [DS] its utils/dataset.py, [TR] its train_multimodal_ar.py,
[U] utils/utils.py (in the fork quanghuy0497/MM-Fit_Excercise_Recognition), [HR] measured
here on the real wXX_sw_{l,r}_hr.npy in ../shared/data/mmfit_labels.
  wXX_{dev}_{acc,gyr}.npy  (N, 5): frame, timestamp (ms), x, y, z [EDA; DS reads column 1 as
      ms and 2: as xyz]. dev: sw_l / sw_r = smartwatch (Mobvoi TicWatch Pro) on the left /
      right wrist, 100 Hz [EDA]; sp_{l,r} smartphones, eb_l earbud (others' rates differ).
      "Each data point is associated with a frame from the left RGB-D camera ... The
      Timestamp column contains the synchronized timestamp" [EDA]. Units are not documented:
      the watches are Wear OS devices, whose Android sensor API reports m/s^2 (gravity
      included) and rad/s. We check rather than trust: |acc| must have a median near 9.8
      (read as m/s^2) or near 1 (read as g and converted; anything else stops the run); gyro
      is --gyr_units (default rad/s), and a 99.9th percentile above 35 rad/s stops the run.
  wXX_pose_3d.npy  (3, N, 1 + 17): x/y/z planes; column 0 the frame number, then the
      Human3.6M 17 joints [EDA: "Human3.6M keypoint model, 17 joints"; DS: frame =
      data[0, i, 0], joints = data[:, i:i+L, 1:]]. [EDA]'s table says (3 x N x 33), which
      contradicts its own 17-joint description and [DS]; code run on the real files reads
      (3, N, 18) float64 (GitHub search, third-party analysis scripts). Joint order: the
      standard Human3.6M-17 order (skeletons.H36M17: 1 right hip, 11 left shoulder), which
      3D lifters output; [EDA] lists the same 17 names mirrored (1 "Left Hip", 11 "Right
      Shoulder"), a mirror-image labelling also seen in other H36M code. --pose_joint_order=eda
      takes [EDA] literally.
      Because this decides which simulated side is which, every workout's report has a
      handedness check: the correlation of each real watch's |gyr| with the simulated left
      and right wrist (a warning is logged when the other side fits clearly better). Units and
      vertical are not documented either: metres vs millimetres is detected from the median
      thigh length (0.1-1.0 m or 100-1000 mm, else the run stops); the vertical is --pose_up
      (default +z, as third-party code on the real files found), checked: the head must be
      above the pelvis in the median frame.
  wXX_labels.csv  start_frame, end_frame, reps, exercise; no header [U; TR]; frames of the pose
      timeline; outside the sets the class is 'non_activity' [DS; TR].
  Splits [EDA; TR]: train w01-w04, w06-w08, w16-w18; val w14, w15, w19; test w09-w11;
      unseen_test w00, w05, w12, w13, w20 (cross-subject).

Frame numbers are not a clock [HR]: over a workout the camera gives 33.3-38.7 ms per frame
(w13 the slowest), locally 32-60 ms, and a linear frame -> time fit misses by up to 32 s.
So every pose frame and label boundary gets its time from the sensor rows associated with it
(`frame_clock`, from the acc file of the first device of --devices present), linearly
interpolated between frames; frames outside the sensor's range get no time (pose) or 1/30 s
steps from the nearest timed frame (label boundaries). t = 0 is the first moment covered by
the pose and every present device; the 50 Hz grid, the windows and the real sensors all use
this axis.

Per workout (one clip, clip_id wXX): pose -> millimetres converted to metres if so, h36m17
order, +z up, spline-resampled to the grid (gaps > --max_gap_s unusable); each real device
-> SI units, 20 Hz zero-phase low-pass, linear interpolation to the grid, in its own axes
at its location (sw_l -> left_wrist, sw_r -> right_wrist, --devices); the other locations
simulated from the pose (mask as in convert_utd_mhad: --simulated_locations=true marks them
available, false zeroes them with mask 0); a missing device file makes its location one of
the "other" locations, reported. Windows: consecutive 5 s on the grid; kept when pose and
every present device are usable throughout. Label: the set's exercise when the window lies
inside one set; a window overlapping a set boundary is mixed and dropped; a window outside
every set is kept with label -1 and no text (--unlabelled=keep), dropped (drop), or labelled
with an appended "non_activity" class, like MM-Fit's own 11-class setup (class). Classes: the
ten of motion.EXERCISES (MM-Fit's names; its "bicep_curls" is "dumbbell_biceps_curls"), so a
model pretrained on the demo data shares them. Text: one of text.DESCRIPTIONS[exercise],
chosen by window index.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re

from absl import app
from absl import flags
from absl import logging
import numpy as np

from data_prep import conversion
from data_prep import text
from mujo_jax import records
from mujo_jax.sim import motion
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax import units

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("w01", "w02", "w03", "w04", "w06", "w07", "w08", "w16", "w17", "w18"),
    "val": ("w14", "w15", "w19"),
    "test": ("w09", "w10", "w11"),
    "unseen_test": ("w00", "w05", "w12", "w13", "w20"),
}
DEVICES = {"sw_l": "left_wrist", "sw_r": "right_wrist"}
CLASS_NAMES = motion.EXERCISES
NON_ACTIVITY = "non_activity"
EXERCISE_NAMES = {"bicep_curls": "dumbbell_biceps_curls"}  # MM-Fit name -> CLASS_NAMES
# Human3.6M-17 joints as [EDA] names them: skeletons.H36M17 with left and right swapped.
EDA_ORDER = tuple(n.replace("left_", "@").replace("right_", "left_").replace("@", "right_")
                  for n in skeletons.H36M17.joint_names)
FRAME_S = 1.0 / 30.0  # nominal camera frame period, only to time label frames off the sensor range
LOWPASS_FRACTION = 0.4  # low-pass cut-off as a fraction of imu_rate_hz (20 Hz at 50 Hz)
MAX_GYR_RAD_S = 35.0
SKELETON = "h36m17"
_WORKOUT = re.compile(r"^w\d\d$")


@dataclasses.dataclass(frozen=True)
class Settings:
  info: records.DatasetInfo
  devices: tuple[tuple[str, str], ...]
  simulated_locations: bool
  unlabelled: str
  pose_joint_order: str
  pose_up: tuple[float, float, float]
  gyr_units: str
  max_gap_s: float
  smoothing_s: float


@dataclasses.dataclass(frozen=True)
class LabelledSet:
  start_frame: int
  end_frame: int
  reps: int
  exercise: str  # a CLASS_NAMES entry


def read_labels(path: str) -> list[LabelledSet]:
  """wXX_labels.csv -> its sets (exercise names mapped to CLASS_NAMES); errors name the line."""
  sets = []
  with open(path, newline="") as f:
    for n, row in enumerate(csv.reader(f), 1):
      if not row or not "".join(row).strip():
        continue
      try:
        start, end, reps, name = int(row[0]), int(row[1]), int(row[2]), row[3].strip()
      except (ValueError, IndexError) as e:
        raise conversion.ConversionError(f"{path} line {n}: expected start_frame,end_frame,"
                                         f"reps,exercise, got {row}") from e
      exercise = EXERCISE_NAMES.get(name, name)
      if exercise not in CLASS_NAMES:
        raise conversion.ConversionError(f"{path} line {n}: unknown exercise {name!r}")
      if end < start:
        raise conversion.ConversionError(f"{path} line {n}: end_frame {end} < start_frame "
                                         f"{start}")
      sets.append(LabelledSet(start, end, reps, exercise))
  return sets


def _load(workout: str, path: str, what: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise conversion.clip_error(workout, path, f"cannot read {what} as .npy: {e}") from e
  if not np.issubdtype(array.dtype, np.number):
    raise conversion.clip_error(workout, path, f"{what} is not numeric ({array.dtype})")
  return array.astype(np.float64)


def load_stream(workout: str, path: str) -> np.ndarray:
  """A sensor file -> [N, 5] (frame, timestamp ms, x, y, z) sorted by timestamp."""
  data = _load(workout, path, "sensor data")
  if data.ndim != 2 or data.shape[1] != 5 or len(data) < 2:
    raise conversion.clip_error(workout, path, f"sensor data has shape {data.shape}, expected "
                                "(N >= 2, 5): frame, timestamp (ms), x, y, z")
  if not np.isfinite(data[:, :2]).all():
    raise conversion.clip_error(workout, path, "non-finite frame or timestamp")
  return data[np.argsort(data[:, 1], kind="stable")]


def frame_clock(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """(frames, times_ms, fixes) of a sensor stream [N, 5] sorted by timestamp.

  A frame's time is its earliest sensor row's timestamp minus half the median sample
  interval: the rows of a frame start within one sample interval after the frame, so this is
  unbiased to +-half an interval (+-5 ms at 100 Hz). Times are made non-decreasing in frame
  order; `fixes` counts the frames that needed it.
  """
  frames, first = np.unique(stream[:, 0], return_index=True)
  steps = np.diff(stream[:, 1])
  half = 0.5 * float(np.median(steps[steps > 0])) if (steps > 0).any() else 0.0
  times = stream[first, 1] - half   # rows are sorted by time: a frame's first row is its earliest
  monotone = np.maximum.accumulate(times)
  return frames, monotone, int(np.count_nonzero(monotone != times))


def frame_times(frames: np.ndarray, clock: tuple[np.ndarray, np.ndarray, int],
                extrapolate: bool = False) -> np.ndarray:
  """Times (ms) of frame numbers; NaN outside the clock's range unless `extrapolate`
  (then FRAME_S steps from the nearest timed frame)."""
  known, times, _ = clock
  out = np.interp(frames, known, times)
  before, after = frames < known[0], frames > known[-1]
  if extrapolate:
    out[before] = times[0] - (known[0] - frames[before]) * FRAME_S * 1000
    out[after] = times[-1] + (frames[after] - known[-1]) * FRAME_S * 1000
  else:
    out[before | after] = np.nan
  return out


def set_spans_ms(sets: list[LabelledSet], clock: tuple[np.ndarray, np.ndarray, int]
                 ) -> np.ndarray:
  """[n, 2] start and end times (ms) of the sets: set i spans [start_frame, end_frame + 1)
  of the pose timeline, frame times from `clock`, extrapolated past its ends. The records
  written here and the downstream adapter label time with this one definition."""
  bounds = np.array([[s.start_frame, s.end_frame + 1] for s in sets], np.float64).reshape(-1, 2)
  return frame_times(bounds.ravel(), clock, extrapolate=True).reshape(-1, 2)


def load_pose(workout: str, path: str, settings: Settings) -> tuple[np.ndarray, np.ndarray, dict]:
  """wXX_pose_3d.npy -> (frames [N], positions [N, 17, 3] metres, h36m17 order, z up, facts)."""
  data = _load(workout, path, "pose")
  if data.ndim != 3 or data.shape[0] != 3 or data.shape[2] != 18 or data.shape[1] < 2:
    raise conversion.clip_error(workout, path, f"pose_3d has shape {data.shape}, expected "
                                "(3, N >= 2, 18): x/y/z planes of frame number + 17 H36M joints")
  frames = data[0, :, 0]
  if not (np.isfinite(frames).all() and (np.diff(frames) > 0).all()):
    raise conversion.clip_error(workout, path, "frame numbers (pose_3d[0, :, 0]) must be finite "
                                "and increasing")
  joints = np.transpose(data[:, :, 1:], (1, 2, 0))                 # [N, 17, 3]
  if settings.pose_joint_order == "eda":
    joints = joints[:, [EDA_ORDER.index(n) for n in skeletons.H36M17.joint_names]]
  skel = skeletons.H36M17
  thigh = np.nanmedian(np.concatenate([
      np.linalg.norm(joints[:, skel.index(f"{s}_knee")] - joints[:, skel.index(f"{s}_hip")],
                     axis=-1) for s in ("left", "right")]))
  if 0.1 <= thigh <= 1.0:
    units = "m"
  elif 100 <= thigh <= 1000:
    units, joints = "mm", joints / 1000.0
  else:
    raise conversion.clip_error(workout, path, f"median thigh length {thigh:.4g} fits neither "
                                "metres (0.1-1.0) nor millimetres (100-1000)")
  joints = conversion.to_z_up(joints, settings.pose_up)
  height = np.nanmedian(joints[:, skel.index("head"), 2] - joints[:, skel.index("pelvis"), 2])
  if not height > 0:
    raise conversion.clip_error(workout, path, f"the head is not above the pelvis along "
                                f"--pose_up={list(settings.pose_up)} (median {height:.3g} m): "
                                "wrong vertical?")
  return frames, joints, {"pose_units": units, "median_thigh_m": round(float(
      thigh / (1000 if units == "mm" else 1)), 3)}


def real_imu(workout: str, acc: np.ndarray, gyr: np.ndarray, paths: tuple[str, str],
             settings: Settings) -> tuple[np.ndarray, np.ndarray, str]:
  """Unit checks and conversion -> (acc xyz m/s^2, gyr xyz rad/s, acc units read)."""
  magnitude = float(np.nanmedian(np.linalg.norm(acc[:, 2:], axis=1)))
  if 7.0 <= magnitude <= 12.5:
    acc_units, acc_xyz = "m/s^2", acc[:, 2:]
  elif 0.7 <= magnitude <= 1.3:
    acc_units, acc_xyz = "g", units.g_to_ms2(acc[:, 2:])
  else:
    raise conversion.clip_error(workout, paths[0], f"median |acc| {magnitude:.3g} fits neither "
                                "m/s^2 (~9.8) nor g (~1)")
  gyr_xyz = gyr[:, 2:] * (np.pi / 180 if settings.gyr_units == "deg/s" else 1.0)
  peak = float(np.nanpercentile(np.linalg.norm(gyr_xyz, axis=1), 99.9))
  if peak > MAX_GYR_RAD_S:
    raise conversion.clip_error(workout, paths[1], f"99.9th percentile |gyr| is {peak:.3g} rad/s "
                                f"reading it as {settings.gyr_units}: deg/s data? "
                                "(--gyr_units)")
  return acc_xyz, gyr_xyz, acc_units


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
  if len(a) < 3 or a.std() == 0 or b.std() == 0:
    return None
  return round(float(np.corrcoef(a, b)[0, 1]), 3)


def make_clip(task) -> conversion.ClipResult:
  """One workout -> its windows (module docstring). task = (workout, files, Settings, tokens)."""
  workout, files, settings, tokens = task
  info = settings.info
  result = conversion.ClipResult()
  details: dict = {"clip_id": workout}
  sets = read_labels(files["labels"])
  frames, joints, facts = load_pose(workout, files["pose"], settings)
  details.update(facts)
  streams = {}
  for device, _ in settings.devices:
    if files.get(f"{device}_acc") and files.get(f"{device}_gyr"):
      streams[device] = (load_stream(workout, files[f"{device}_acc"]),
                         load_stream(workout, files[f"{device}_gyr"]))
  missing = [d for d, _ in settings.devices if d not in streams]
  if missing:
    details["devices_missing"] = missing
    result.counts["devices_missing"] += len(missing)
  if not streams:
    raise conversion.clip_error(workout, files["pose"], "no sensor stream of "
                                f"{[d for d, _ in settings.devices]} to time the pose frames")
  clock = frame_clock(next(iter(streams.values()))[0])
  if clock[2]:
    details["frame_clock_fixes"] = clock[2]
  pose_ms = frame_times(frames, clock)
  timed = np.isfinite(pose_ms)
  index = np.flatnonzero(timed)
  timed[index[1:][np.diff(pose_ms[index]) <= 0]] = False  # two frames at one time: keep the first
  if timed.sum() < 2:
    raise conversion.clip_error(workout, files["pose"], "fewer than 2 pose frames fall in the "
                                "sensor recording")
  # t = 0: the first moment the pose and every present device cover.
  t0_ms = max([pose_ms[timed][0]] + [s[0, 1] for pair in streams.values() for s in pair])
  pose_t = (pose_ms[timed] - t0_ms) / 1000.0
  if pose_t[-1] <= 0:
    raise conversion.clip_error(workout, files["pose"], "the pose ends before the sensors start")
  t_grid = conversion.grid(pose_t[-1], info.imu_rate_hz)
  positions = conversion.resample_positions(pose_t, joints[timed], t_grid, settings.max_gap_s)
  usable = np.isfinite(positions).all(axis=(1, 2))

  real = {}
  for device, location in settings.devices:
    if device not in streams:
      continue
    acc, gyr = streams[device]
    acc_xyz, gyr_xyz, acc_units = real_imu(
        workout, acc, gyr, (files[f"{device}_acc"], files[f"{device}_gyr"]), settings)
    details.setdefault("acc_units", {})[device] = acc_units
    lowpass = LOWPASS_FRACTION * info.imu_rate_hz
    values = np.concatenate([
        conversion.resample_stream((acc[:, 1] - t0_ms) / 1000, acc_xyz, t_grid,
                                   settings.max_gap_s, lowpass),
        conversion.resample_stream((gyr[:, 1] - t0_ms) / 1000, gyr_xyz, t_grid,
                                   settings.max_gap_s, lowpass)], axis=1)
    real[location] = values
    usable &= np.isfinite(values).all(axis=1)

  window = info.imu_window
  total = len(t_grid) // window
  kept = conversion.usable_windows(usable, window)
  result.counts["clips"] += 1
  result.counts["windows_dropped_pose_or_imu_gap"] += total - len(kept)

  # Labels: set i spans [start, end + 1 frame) on the time axis.
  set_t = (set_spans_ms(sets, clock) - t0_ms) / 1000
  labelled: dict[int, int] = {}
  for w in kept:
    a, b = w * info.window_s, (w + 1) * info.window_s
    inside = [i for i, (s, e) in enumerate(set_t) if s <= a and b <= e]
    overlap = [i for i, (s, e) in enumerate(set_t) if s < b and a < e]
    if inside:
      labelled[w] = info.class_names.index(sets[inside[0]].exercise)
    elif overlap:
      result.counts["windows_dropped_mixed_label"] += 1
    elif settings.unlabelled == "drop":
      result.counts["windows_dropped_unlabelled"] += 1
    else:
      labelled[w] = info.class_names.index(NON_ACTIVITY) if settings.unlabelled == "class" else -1
  windows = sorted(labelled)

  # Simulated: every location, or (for the handedness check only) the two wrists.
  locations = info.imu_locations
  sim_locations = locations if settings.simulated_locations else tuple(
      loc for loc in ("left_wrist", "right_wrist") if loc in locations)
  sim, failed = conversion.simulate_windows(positions, windows, window, SKELETON, sim_locations,
                                            info.imu_rate_hz, settings.smoothing_s)
  if failed:
    details["simulator_errors"] = [reason for _, reason in failed]
  if settings.simulated_locations:
    result.counts["windows_dropped_simulator"] += sum(len(ws) for ws, _ in failed)
    windows = [w for w in windows if w in sim]

  handedness = {}
  checked = [w for w in windows if w in sim]
  for device, location in settings.devices:
    if location in real and checked:
      rows = np.concatenate([np.arange(w * window, (w + 1) * window) for w in checked])
      real_gyr = np.linalg.norm(real[location][rows, 3:], axis=1)
      handedness[device] = {side: _correlation(real_gyr, np.linalg.norm(
          np.concatenate([sim[w][sim_locations.index(side), :, 3:] for w in checked]), axis=1))
                            for side in ("left_wrist", "right_wrist") if side in sim_locations}
  if handedness:
    details["gyr_magnitude_r_real_vs_simulated"] = handedness
    swapped = [d for d, loc in settings.devices if d in handedness and _prefers_other_side(
        handedness[d], loc)]
    if swapped and len(swapped) == len(handedness):
      details["warning"] = ("every real watch matches the simulated opposite wrist better: "
                            "is --pose_joint_order right?")
      logging.warning("convert_mmfit: %s: %s %s", workout, details["warning"], handedness)

  real_mask = np.array([loc in real for loc in locations])
  for w in windows:
    imu = (sim[w].copy() if settings.simulated_locations
           else np.zeros((len(locations), window, 6), np.float32))
    for location, values in real.items():
      imu[locations.index(location)] = values[w * window:(w + 1) * window]
    label = labelled[w]
    exercise = info.class_names[label] if label >= 0 else None
    ids, lens = tokens.get(exercise, (None, None))
    choice = w % len(ids) if ids is not None else 0
    result.examples.append({
        "imu": imu,
        "imu_location_mask": np.where(real_mask | settings.simulated_locations, 1, 0),
        "pose": conversion.root_relative(
            positions[w * window:(w + 1) * window:conversion.pose_step(info)], SKELETON),
        "text_ids": None if ids is None else ids[choice],
        "text_len": 0 if ids is None else int(lens[choice]),
        "label": label, "clip_id": workout, "window_index": w,
    })
  result.counts["windows_labelled"] += sum(1 for w in windows if labelled[w] >= 0)
  result.counts["windows_unlabelled"] += sum(1 for w in windows if labelled[w] < 0)
  result.details = details
  return result


def _prefers_other_side(r: dict, location: str) -> bool:
  other = location.replace("left", "@").replace("right", "left").replace("@", "right")
  own, opposite = r.get(location), r.get(other)
  return own is not None and opposite is not None and opposite > own + 0.05


def workout_files(mmfit_dir: str, workout: str, devices, labels_dir: str | None) -> dict:
  """The files of a workout: pose and labels must exist, device files may be missing (None)."""
  folder = os.path.join(mmfit_dir, workout)
  files = {"pose": os.path.join(folder, f"{workout}_pose_3d.npy"),
           "labels": os.path.join(labels_dir or mmfit_dir, workout, f"{workout}_labels.csv")}
  for key in ("pose", "labels"):
    if not os.path.isfile(files[key]):
      raise conversion.ConversionError(f"clip {workout!r} ({files[key]}): {key} file not found")
  for device, _ in devices:
    for kind in ("acc", "gyr"):
      path = os.path.join(folder, f"{workout}_{device}_{kind}.npy")
      files[f"{device}_{kind}"] = path if os.path.isfile(path) else None
  return files


def build(mmfit_dir: str, out_dir: str, *, labels_dir: str | None = None, workouts=None,
          devices=tuple(DEVICES.items()), simulated_locations: bool = True,
          unlabelled: str = "keep", pose_joint_order: str = "h36m", pose_up=(0.0, 0.0, 1.0),
          gyr_units: str = "rad/s", max_gap_s: float = 0.3, smoothing_s: float = 0.3,
          splits=SPLITS, imu_locations=virtual_imu.SENSOR_LOCATIONS, workers: int | None = None,
          records_per_shard: int = 256, log=print) -> conversion.Report:
  """Converts the workouts under mmfit_dir into out_dir (module docstring)."""
  if unlabelled not in ("keep", "drop", "class"):
    raise ValueError(f"unlabelled must be keep, drop or class, got {unlabelled!r}")
  if pose_joint_order not in ("h36m", "eda"):
    raise ValueError(f"pose_joint_order must be h36m or eda, got {pose_joint_order!r}")
  if gyr_units not in ("rad/s", "deg/s"):
    raise ValueError(f"gyr_units must be rad/s or deg/s, got {gyr_units!r}")
  devices = tuple((d, loc) for d, loc in devices)
  for device, location in devices:
    if location not in imu_locations:
      raise ValueError(f"device {device}: location {location!r} not in {list(imu_locations)}")
  if not os.path.isdir(mmfit_dir):
    raise FileNotFoundError(f"MM-Fit folder {mmfit_dir} not found")
  found = sorted(d for d in os.listdir(mmfit_dir) if _WORKOUT.match(d)
                 and os.path.isdir(os.path.join(mmfit_dir, d)))
  if workouts:
    absent = sorted(set(workouts) - set(found))
    if absent:
      raise conversion.ConversionError(f"workouts {absent} not found under {mmfit_dir}")
    found = sorted(set(workouts))
  if not found:
    raise conversion.ConversionError(f"no workout folders wXX under {mmfit_dir}")
  owner = {w: s for s, ws in splits.items() for w in ws}
  unsplit = [w for w in found if w not in owner]
  if unsplit:
    raise conversion.ConversionError(f"workouts {unsplit} are in no split of {dict(splits)}")
  class_names = CLASS_NAMES + ((NON_ACTIVITY,) if unlabelled == "class" else ())
  tokenizer = text.load_tokenizer()
  others = "simulated, mask 1" if simulated_locations else "zero, mask 0"
  info = records.DatasetInfo(
      name="mmfit", imu_locations=tuple(imu_locations),
      joint_names=skeletons.H36M17.joint_names, class_names=class_names,
      tokenizer=text.TOKENIZER_NAME, vocab_size=tokenizer.vocab_size,
      pad_id=tokenizer.pad_token_id, skeleton=SKELETON,
      pose_units="metres, root-relative (root: pelvis), +z up",
      video_features="none (MM-Fit videos are not converted)",
      source=("MM-Fit (Stromback et al., IMWUT 2020), data_prep/convert_mmfit.py: estimated 3D "
              "pose; real IMU " + ", ".join(f"{d} -> {loc}" for d, loc in devices)
              + f"; other locations {others}"
              f"; unlabelled windows: {unlabelled}"))
  tokens = {}
  for exercise in CLASS_NAMES:
    ids, lens = text.tokenize(tokenizer, text.DESCRIPTIONS[exercise], info.text_len)
    tokens[exercise] = (ids, lens)
  settings = Settings(info, devices, simulated_locations, unlabelled, pose_joint_order,
                      tuple(float(v) for v in pose_up), gyr_units, max_gap_s, smoothing_s)
  tasks = collections.defaultdict(list)
  for w in found:
    tasks[owner[w]].append((w, workout_files(mmfit_dir, w, devices, labels_dir), settings,
                            tokens))
  report_settings = {"workouts": found, "devices": dict(devices),
                     "simulated_locations": simulated_locations, "unlabelled": unlabelled,
                     "pose_joint_order": pose_joint_order, "pose_up": list(settings.pose_up),
                     "gyr_units": gyr_units, "max_gap_s": max_gap_s, "smoothing_s": smoothing_s,
                     "splits": {k: list(v) for k, v in splits.items()}}
  return conversion.convert(out_dir, info, tasks, make_clip, workers=workers,
                            records_per_shard=records_per_shard, settings=report_settings,
                            log=log, name="convert_mmfit")


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("mmfit_dir", None, "MM-Fit root with wXX/ folders.", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write the dataset.", required=True)
  flags.DEFINE_string("labels_dir", None, "Root with wXX/wXX_labels.csv if not in mmfit_dir "
                      "(e.g. ../shared/data/mmfit_labels).")
  flags.DEFINE_list("workouts", None, "Convert only these workouts (default: all found).")
  flags.DEFINE_list("devices", [f"{d}:{loc}" for d, loc in DEVICES.items()],
                    "Real devices as device:location.")
  flags.DEFINE_bool("simulated_locations", True, "Mark simulated sensor locations available "
                    "(mask 1); false: zero them, mask 0.")
  flags.DEFINE_enum("unlabelled", "keep", ["keep", "drop", "class"], "Windows outside every "
                    "set: keep with label -1, drop, or label them non_activity.")
  flags.DEFINE_enum("pose_joint_order", "h36m", ["h36m", "eda"], "pose_3d joint order: "
                    "standard Human3.6M-17, or the mirrored names of MM-Fit's EDA notebook.")
  flags.DEFINE_list("pose_up", ["0", "0", "1"], "World up vector of pose_3d.")
  flags.DEFINE_enum("gyr_units", "rad/s", ["rad/s", "deg/s"], "Gyroscope units of the files.")
  flags.DEFINE_float("max_gap_s", 0.3, "Longest gap between samples that is interpolated.")
  flags.DEFINE_float("smoothing_s", 0.3, "Virtual IMU smoothing window (s).")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all CPUs; 0: in-process).")
  flags.DEFINE_integer("records_per_shard", 256, "Records per TFRecord shard.")


def main(argv):
  del argv
  devices = []
  for item in FLAGS.devices:
    device, _, location = item.partition(":")
    if not location:
      raise app.UsageError(f"--devices: {item!r} is not device:location")
    devices.append((device, location))
  build(FLAGS.mmfit_dir, FLAGS.out_dir, labels_dir=FLAGS.labels_dir, workouts=FLAGS.workouts,
        devices=devices, simulated_locations=FLAGS.simulated_locations,
        unlabelled=FLAGS.unlabelled, pose_joint_order=FLAGS.pose_joint_order,
        pose_up=tuple(float(v) for v in FLAGS.pose_up), gyr_units=FLAGS.gyr_units,
        max_gap_s=FLAGS.max_gap_s, smoothing_s=FLAGS.smoothing_s, workers=FLAGS.workers,
        records_per_shard=FLAGS.records_per_shard)


if __name__ == "__main__":
  define_flags()
  app.run(main)
