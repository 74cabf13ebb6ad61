"""MM-Fit (Stromback et al., IMWUT 2020): the official layout, its clock and its units.

One folder per workout wXX. Sources: [EDA] KDMStromback/mm-fit EDA.ipynb, [DS] its
utils/dataset.py, [TR] its train_multimodal_ar.py, [U] utils/utils.py (in the fork
quanghuy0497/MM-Fit_Excercise_Recognition), [HR] measured on the real wXX_sw_{l,r}_hr.npy in
../shared/data/mmfit_labels.
  wXX_{dev}_{acc,gyr}.npy  (N, 5): frame, timestamp (ms), x, y, z [EDA; DS reads column 1 as
      ms and 2: as xyz]. dev: sw_l / sw_r = smartwatch (Mobvoi TicWatch Pro) on the left /
      right wrist, 100 Hz [EDA]; sp_{l,r} smartphones, eb_l earbud (others' rates differ).
      "Each data point is associated with a frame from the left RGB-D camera ... The
      Timestamp column contains the synchronized timestamp" [EDA]. Units are not documented:
      the watches are Wear OS devices, whose Android sensor API reports m/s^2 (gravity
      included) and rad/s. `imu_units` checks rather than trusts: |acc| must have a median
      near 9.8 (read as m/s^2) or near 1 (read as g and converted; anything else raises); the
      gyro unit is the caller's `gyr_units`, and a 99.9th percentile above MAX_GYR_RAD_S raises.
  wXX_pose_3d.npy  (3, N, 1 + 17): x/y/z planes; column 0 the frame number, then the
      Human3.6M 17 joints [EDA: "Human3.6M keypoint model, 17 joints"; DS: frame =
      data[0, i, 0], joints = data[:, i:i+L, 1:]]. [EDA]'s table says (3 x N x 33), which
      contradicts its own 17-joint description and [DS]; code run on the real files reads
      (3, N, 18) float64. Joint order: the standard Human3.6M-17 order (skeletons.H36M17:
      1 right hip, 11 left shoulder), which 3D lifters output; [EDA] lists the same 17 names
      mirrored (1 "Left Hip", 11 "Right Shoulder"), a mirror-image labelling also seen in other
      H36M code; joint_order="eda" takes [EDA] literally. Units and vertical are not
      documented either: metres vs millimetres is detected from the median thigh length
      (0.1-1.0 m or 100-1000 mm, else an error); the vertical is the caller's `up` (third-party
      code on the real files found +z), checked: the head must be above the pelvis in the
      median frame.
  wXX_labels.csv  start_frame, end_frame, reps, exercise; no header [U; TR]; frames of the pose
      timeline; outside the sets the class is 'non_activity' [DS; TR].
  Splits [EDA; TR]: train w01-w04, w06-w08, w16-w18; val w14, w15, w19; test w09-w11;
      unseen_test w00, w05, w12, w13, w20 (cross-subject).

Frame numbers are not a clock [HR]: the camera's frame period varies over a workout and
locally, so a linear frame -> time fit is far off. A frame's time comes from the sensor rows
associated with it (`frame_clock`), linearly interpolated between frames (`frame_times`);
label sets span [start_frame, end_frame + 1) on that clock (`set_spans_ms`), the one
definition the pretraining converter and the downstream adapter share.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from mujo_jax.sim import motion
from mujo_jax.sim import skeletons
from mujo_jax.sources import errors
from mujo_jax.sources import geometry
from mujo_jax import units

SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("w01", "w02", "w03", "w04", "w06", "w07", "w08", "w16", "w17", "w18"),
    "val": ("w14", "w15", "w19"),
    "test": ("w09", "w10", "w11"),
    "unseen_test": ("w00", "w05", "w12", "w13", "w20"),
}
# The ten exercises in motion.EXERCISES order (MM-Fit's names), so a label index means the same
# exercise in the pretraining records, the demo data and downstream.
CLASS_NAMES = motion.EXERCISES
EXERCISE_NAMES = {"bicep_curls": "dumbbell_biceps_curls"}  # MM-Fit name -> CLASS_NAMES
# Human3.6M-17 joints as [EDA] names them: skeletons.H36M17 with left and right swapped.
EDA_ORDER = tuple(n.replace("left_", "@").replace("right_", "left_").replace("@", "right_")
                  for n in skeletons.H36M17.joint_names)
JOINT_ORDERS = ("h36m", "eda")
GYR_UNITS = ("rad/s", "deg/s")
SMARTWATCH_RATE_HZ = 100.0   # the smartwatches' rate per [EDA]
FRAME_S = 1.0 / 30.0  # nominal camera frame period, only to time label frames off the sensor range
MAX_GYR_RAD_S = 35.0


@dataclasses.dataclass(frozen=True)
class LabelledSet:
  start_frame: int
  end_frame: int
  reps: int
  exercise: str  # a CLASS_NAMES entry


def file_path(root: str, workout: str, kind: str, labels_dir: str | None = None) -> str:
  """Where the official layout keeps one file of a workout.

  kind: "pose_3d", "labels", or "{device}_{acc|gyr}" (e.g. "sw_l_acc"). The labels may
  live under their own root (`labels_dir`, e.g. a copy of the label files alone).
  """
  if kind == "labels":
    return os.path.join(labels_dir or root, workout, f"{workout}_labels.csv")
  return os.path.join(root, workout, f"{workout}_{kind}.npy")


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
        raise errors.SourceError(f"{path} line {n}: expected start_frame,end_frame,"
                                 f"reps,exercise, got {row}") from e
      exercise = EXERCISE_NAMES.get(name, name)
      if exercise not in CLASS_NAMES:
        raise errors.SourceError(f"{path} line {n}: unknown exercise {name!r}")
      if end < start:
        raise errors.SourceError(f"{path} line {n}: end_frame {end} < start_frame {start}")
      sets.append(LabelledSet(start, end, reps, exercise))
  return sets


def _load(workout: str, path: str, what: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise errors.clip_error(workout, path, f"cannot read {what} as .npy: {e}") from e
  if not np.issubdtype(array.dtype, np.number):
    raise errors.clip_error(workout, path, f"{what} is not numeric ({array.dtype})")
  return array.astype(np.float64)


def load_stream(workout: str, path: str) -> np.ndarray:
  """A sensor file -> [N, 5] (frame, timestamp ms, x, y, z) sorted by timestamp."""
  data = _load(workout, path, "sensor data")
  if data.ndim != 2 or data.shape[1] != 5 or len(data) < 2:
    raise errors.clip_error(workout, path, f"sensor data has shape {data.shape}, expected "
                            "(N >= 2, 5): frame, timestamp (ms), x, y, z")
  if not np.isfinite(data[:, :2]).all():
    raise errors.clip_error(workout, path, "non-finite frame or timestamp")
  return data[np.argsort(data[:, 1], kind="stable")]


def median_rate_hz(stream: np.ndarray) -> float:
  """A stream's [N, 5] median sample rate from its timestamps (0 when they never advance)."""
  steps = np.diff(stream[:, 1])
  steps = steps[steps > 0]
  return 1000.0 / float(np.median(steps)) if len(steps) else 0.0


def frame_clock(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """(frames, times_ms, fixes) of a sensor stream [N, 5] sorted by timestamp.

  A frame's time is its earliest sensor row's timestamp minus half the median sample
  interval: the rows of a frame start within one sample interval after the frame, so this is
  unbiased to +-half an interval. Times are made non-decreasing in frame order; `fixes`
  counts the frames that needed it.
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
  of the pose timeline, frame times from `clock`, extrapolated past its ends."""
  bounds = np.array([[s.start_frame, s.end_frame + 1] for s in sets], np.float64).reshape(-1, 2)
  return frame_times(bounds.ravel(), clock, extrapolate=True).reshape(-1, 2)


def sample_labels(sets: list[LabelledSet], clock: tuple[np.ndarray, np.ndarray, int],
                  times_ms: np.ndarray) -> np.ndarray:
  """Class index per time (ms): the first set whose span (`set_spans_ms`) contains it; -1
  outside every set."""
  y = np.full(len(times_ms), -1, np.int32)
  if not sets:
    return y
  spans = set_spans_ms(sets, clock)
  for s, (start, end) in reversed(list(zip(sets, spans))):   # the first set wins overlaps
    y[(times_ms >= start) & (times_ms < end)] = CLASS_NAMES.index(s.exercise)
  return y


def load_pose(workout: str, path: str, joint_order: str = "h36m",
              up=(0.0, 0.0, 1.0), up_option: str = "up"
              ) -> tuple[np.ndarray, np.ndarray, dict]:
  """wXX_pose_3d.npy -> (frames [N], positions [N, 17, 3] metres, h36m17 order, z up, facts).

  joint_order: "h36m" or "eda" (module docstring); up: the files' world vertical; up_option
  names the caller's setting for `up` in the error when the head is not above the pelvis.
  """
  data = _load(workout, path, "pose")
  if data.ndim != 3 or data.shape[0] != 3 or data.shape[2] != 18 or data.shape[1] < 2:
    raise errors.clip_error(workout, path, f"pose_3d has shape {data.shape}, expected "
                            "(3, N >= 2, 18): x/y/z planes of frame number + 17 H36M joints")
  frames = data[0, :, 0]
  if not (np.isfinite(frames).all() and (np.diff(frames) > 0).all()):
    raise errors.clip_error(workout, path, "frame numbers (pose_3d[0, :, 0]) must be finite "
                            "and increasing")
  joints = np.transpose(data[:, :, 1:], (1, 2, 0))                 # [N, 17, 3]
  if joint_order == "eda":
    joints = joints[:, [EDA_ORDER.index(n) for n in skeletons.H36M17.joint_names]]
  elif joint_order != "h36m":
    raise ValueError(f"joint_order must be one of {JOINT_ORDERS}, got {joint_order!r}")
  skel = skeletons.H36M17
  thigh = np.nanmedian(np.concatenate([
      np.linalg.norm(joints[:, skel.index(f"{s}_knee")] - joints[:, skel.index(f"{s}_hip")],
                     axis=-1) for s in ("left", "right")]))
  if 0.1 <= thigh <= 1.0:
    pose_units = "m"
  elif 100 <= thigh <= 1000:
    pose_units, joints = "mm", joints / 1000.0
  else:
    raise errors.clip_error(workout, path, f"median thigh length {thigh:.4g} fits neither "
                            "metres (0.1-1.0) nor millimetres (100-1000)")
  joints = geometry.to_z_up(joints, up)
  height = np.nanmedian(joints[:, skel.index("head"), 2] - joints[:, skel.index("pelvis"), 2])
  if not height > 0:
    raise errors.clip_error(workout, path, f"the head is not above the pelvis along "
                            f"{up_option}={[float(v) for v in up]} (median {height:.3g} m): "
                            "wrong vertical?")
  return frames, joints, {"pose_units": pose_units, "median_thigh_m": round(float(
      thigh / (1000 if pose_units == "mm" else 1)), 3)}


def imu_units(workout: str, acc: np.ndarray, gyr: np.ndarray, paths: tuple[str, str],
              gyr_units: str, gyr_option: str = "gyr_units"
              ) -> tuple[np.ndarray, np.ndarray, str]:
  """Unit checks and conversion of a watch's streams [N, 5] -> (acc xyz m/s^2, gyr xyz rad/s,
  the acc unit found: "m/s^2" or "g").

  gyr_units: the unit the gyr file is in ("rad/s" or "deg/s"); gyr_option names the caller's
  setting for it in the error when the gyro reads too fast for that unit.
  """
  if gyr_units not in GYR_UNITS:
    raise ValueError(f"gyr_units must be one of {GYR_UNITS}, got {gyr_units!r}")
  magnitude = float(np.nanmedian(np.linalg.norm(acc[:, 2:], axis=1)))
  if 7.0 <= magnitude <= 12.5:
    acc_units, acc_xyz = "m/s^2", acc[:, 2:]
  elif 0.7 <= magnitude <= 1.3:
    acc_units, acc_xyz = "g", units.g_to_ms2(acc[:, 2:])
  else:
    raise errors.clip_error(workout, paths[0], f"median |acc| {magnitude:.3g} fits neither "
                            "m/s^2 (~9.8) nor g (~1)")
  gyr_xyz = units.deg_to_rad(gyr[:, 2:]) if gyr_units == "deg/s" else gyr[:, 2:]
  peak = float(np.nanpercentile(np.linalg.norm(gyr_xyz, axis=1), 99.9))
  if peak > MAX_GYR_RAD_S:
    raise errors.clip_error(workout, paths[1], f"99.9th percentile |gyr| is {peak:.3g} rad/s "
                            f"reading it as {gyr_units}: deg/s data? ({gyr_option})")
  return acc_xyz, gyr_xyz, acc_units
