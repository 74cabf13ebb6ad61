r"""Converts MM-Fit (real smartwatch IMU, estimated 3D pose, exercise labels) to the record format.

  python -m data_prep.convert_mmfit --mmfit_dir=/data/mm-fit --out_dir=/data/mmfit_records \
      [--labels_dir=../shared/data/mmfit_labels] [--workouts=w01,w14] [--unlabelled=keep] \
      [--simulated_locations=true] [--workers=N]

MM-Fit's official layout, its units and its clock: `mujo_jax.sources.mmfit` (its docstring
has the sources). Frame numbers are not a clock, so every pose frame and label boundary gets
its time from the sensor rows associated with it (`mmfit.frame_clock`, from the acc file of
the first device of --devices present), linearly interpolated between frames; frames outside
the sensor's range get no time (pose) or 1/30 s steps from the nearest timed frame (label
boundaries). t = 0 is the first moment covered by the pose and every present device; the
50 Hz grid, the windows and the real sensors all use this axis. A watch's units are checked
(`mmfit.imu_units`: acc m/s^2 or g from the median |acc|; gyro --gyr_units, default rad/s,
checked against a 99.9th percentile limit); the pose's vertical is --pose_up (default +z) and
its joint order --pose_joint_order (h36m, or the mirrored names of MM-Fit's EDA notebook).
Because the joint order decides which simulated side is which, every workout's report has a
handedness check: the correlation of each real watch's |gyr| with the simulated left and
right wrist (a warning is logged when the other side fits clearly better).

Per workout (one clip, clip_id wXX): pose -> millimetres converted to metres if so, h36m17
order, +z up, spline-resampled to the grid (gaps > --max_gap_s unusable); each real device
-> SI units, resampled to the grid (`resampling.resample_stream`), in its own axes
at its location (sw_l -> left_wrist, sw_r -> right_wrist, --devices); the other locations
simulated from the pose (mask as in convert_utd_mhad: --simulated_locations=true marks them
available, false zeroes them with mask 0); a missing device file makes its location one of
the "other" locations, reported. Windows: consecutive 5 s on the grid; kept when pose and
every present device are usable throughout. Label: the set's exercise when the window lies
inside one set; a window overlapping a set boundary is mixed and dropped; a window outside
every set is kept with label -1 and no text (--unlabelled=keep), dropped (drop), or labelled
with an appended "non_activity" class, like MM-Fit's own 11-class setup (class). Classes: the
ten of mmfit.CLASS_NAMES (motion.EXERCISES; MM-Fit's "bicep_curls" is
"dumbbell_biceps_curls"), so a model pretrained on the demo data shares them. Text: one of
text.DESCRIPTIONS[exercise], chosen by window index.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

from absl import app
from absl import flags
from absl import logging
import numpy as np

from data_prep import conversion
from data_prep import text
from mujo_jax import console
from mujo_jax import records
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import mmfit
from mujo_jax.sources import resampling

DEVICES = {"sw_l": "left_wrist", "sw_r": "right_wrist"}
NON_ACTIVITY = "non_activity"
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
  sets = mmfit.read_labels(files["labels"])
  frames, joints, facts = mmfit.load_pose(workout, files["pose"], settings.pose_joint_order,
                                          settings.pose_up, up_option="--pose_up")
  details.update(facts)
  streams = {}
  for device, _ in settings.devices:
    if files.get(f"{device}_acc") and files.get(f"{device}_gyr"):
      streams[device] = (mmfit.load_stream(workout, files[f"{device}_acc"]),
                         mmfit.load_stream(workout, files[f"{device}_gyr"]))
  missing = [d for d, _ in settings.devices if d not in streams]
  if missing:
    details["devices_missing"] = missing
    result.counts["devices_missing"] += len(missing)
  if not streams:
    raise conversion.clip_error(workout, files["pose"], "no sensor stream of "
                                f"{[d for d, _ in settings.devices]} to time the pose frames")
  clock = mmfit.frame_clock(next(iter(streams.values()))[0])
  if clock[2]:
    details["frame_clock_fixes"] = clock[2]
  pose_ms = mmfit.frame_times(frames, clock)
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
  t_grid = resampling.grid(pose_t[-1], info.imu_rate_hz)
  positions = conversion.resample_positions(pose_t, joints[timed], t_grid, settings.max_gap_s)
  usable = np.isfinite(positions).all(axis=(1, 2))

  real = {}
  for device, location in settings.devices:
    if device not in streams:
      continue
    acc, gyr = streams[device]
    acc_xyz, gyr_xyz, acc_units = mmfit.imu_units(
        workout, acc, gyr, (files[f"{device}_acc"], files[f"{device}_gyr"]), settings.gyr_units,
        gyr_option="--gyr_units")
    details.setdefault("acc_units", {})[device] = acc_units
    values = np.concatenate([
        resampling.resample_stream((acc[:, 1] - t0_ms) / 1000, acc_xyz, t_grid,
                                   settings.max_gap_s),
        resampling.resample_stream((gyr[:, 1] - t0_ms) / 1000, gyr_xyz, t_grid,
                                   settings.max_gap_s)], axis=1)
    real[location] = values
    usable &= np.isfinite(values).all(axis=1)

  window = info.imu_window
  total = len(t_grid) // window
  kept = conversion.usable_windows(usable, window)
  result.counts["clips"] += 1
  result.counts["windows_dropped_pose_or_imu_gap"] += total - len(kept)

  # Labels: set i spans [start, end + 1 frame) on the time axis.
  set_t = (mmfit.set_spans_ms(sets, clock) - t0_ms) / 1000
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
  files = {"pose": mmfit.file_path(mmfit_dir, workout, "pose_3d"),
           "labels": mmfit.file_path(mmfit_dir, workout, "labels", labels_dir)}
  for key in ("pose", "labels"):
    if not os.path.isfile(files[key]):
      raise conversion.ConversionError(f"clip {workout!r} ({files[key]}): {key} file not found")
  for device, _ in devices:
    for kind in ("acc", "gyr"):
      path = mmfit.file_path(mmfit_dir, workout, f"{device}_{kind}")
      files[f"{device}_{kind}"] = path if os.path.isfile(path) else None
  return files


def build(mmfit_dir: str, out_dir: str, *, labels_dir: str | None = None, workouts=None,
          devices=tuple(DEVICES.items()), simulated_locations: bool = True,
          unlabelled: str = "keep", pose_joint_order: str = "h36m", pose_up=(0.0, 0.0, 1.0),
          gyr_units: str = "rad/s", max_gap_s: float = 0.3, smoothing_s: float = 0.3,
          splits=mmfit.SPLITS, imu_locations=virtual_imu.SENSOR_LOCATIONS,
          workers: int | None = None,
          records_per_shard: int = 256, log=print) -> conversion.Report:
  """Converts the workouts under mmfit_dir into out_dir (module docstring)."""
  if unlabelled not in ("keep", "drop", "class"):
    raise ValueError(f"unlabelled must be keep, drop or class, got {unlabelled!r}")
  if pose_joint_order not in mmfit.JOINT_ORDERS:
    raise ValueError(f"pose_joint_order must be h36m or eda, got {pose_joint_order!r}")
  if gyr_units not in mmfit.GYR_UNITS:
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
  class_names = mmfit.CLASS_NAMES + ((NON_ACTIVITY,) if unlabelled == "class" else ())
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
  for exercise in mmfit.CLASS_NAMES:
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
  console.setup()
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
