r"""Converts UTD-MHAD (real Kinect skeleton + real wearable IMU) to the record format.

  python -m data_prep.convert_utd_mhad --utd_mhad_dir=../shared/data/utd_mhad --out_dir=/data/utd \
      [--simulated_locations=true] [--splits="train:1,3,5;val:7;test:2,4,6,8"] \
      [--subjects=1,2] [--actions=1,2,3] [--workers=N] [--trial_steps=50]

One record per trial (clip_id aA_sS_tT, window_index 0, no video):
  pose   the real Kinect v1 skeleton, kept as its 20 joints in KINECT_V1_20 order
         (dataset_info: skeleton "kinect_v1_20" and its joint names; a model trained on this
         needs config.num_joints = 20). Mapping to h36m17 would need a neck/nose joint Kinect
         does not have, i.e. an invented joint. The skeleton is stretched over the inertial
         recording (utd_mhad.aligned_fps: ~19 Hz, not the nominal 30), turned so that +z is up
         (Kinect's camera y, utd_mhad.UP), spline-resampled to the 50 Hz grid of the inertial
         samples, every 2nd sample kept (25 Hz), root-relative (hip_center).
  imu    all 16 sensor locations, so models and readers are shared with FiMAD. The trial's
         real sensor (right_wrist for a1-a21, right_thigh for a22-a27) goes in its location, in
         SI units (utd_mhad.load_inertial) and in the device's own axes, which are not the
         simulator's axis convention. The other 15 are simulated from the skeleton
         (virtual_imu, smoothing_s 0.3 as validated in data_prep/validate_imu_sim.py).
  imu_location_mask  1 at the real location. The 15 simulated ones are 1 with
         --simulated_locations=true (default: available for training, just as every FiMAD
         location is simulated) or 0 and zero-filled with false: use false to train or
         evaluate on the real sensor alone (AugmentConfig "random" then always picks it).
  text   the action description (utd_mhad.ACTIONS); label = action - 1. --text=motion
         writes a caption of the trial's skeleton movement instead (data_prep/motion_text.py,
         windows only): text that reads no label, so that the training subjects can join a
         label-free pretraining mixture with text.
--pose_skeleton=h36m17 writes the pose on the 17-joint H36M skeleton instead (the demo's and
the mocap converter's), so UTD-MHAD can join a pretraining mixture with them (mujo_jax/
mixture.py). Kinect has no nose or head-top joint: H36M "neck" (the neck/nose point) is
Kinect's head centre and H36M "head" lies half a neck length (shoulder_center -> head) above
it; pelvis is hip_center, thorax shoulder_center, wrists the wrists (KINECT_TO_H36M17). The
simulated locations still come from the Kinect skeleton.
Splits keep subjects whole: utd_mhad.SUBJECT_SPLITS (train 1, 3, 5; val 7; test 2, 4, 6, 8)
unless --splits says otherwise.

Trials do not fill a window. A window is window_s = 5 s (250 samples); trials last 2.1-6.5 s
(median 3.5 s). A shorter trial is centred and padded as the body at rest in its first / last
posture: the pose holds its first / last frame, so the simulated sensors read gravity and no
rotation there, and the real sensor reads the mean acceleration of its first / last 0.1 s and
zero rotation. No motion is invented. Zero padding would not do: a resting accelerometer
reads 9.8 m/s^2, not 0 (zeros are free fall), and repeating the trial would add a jump.
Trials longer than the window (40 of 861) keep their central window_s, counted as
"trials_cropped" in conversion_report.json with the seconds cut. --window_s=7 covers every
trial uncropped (the model's imu_len / pose_len must then match).

--trial_steps=N (the CMC-CMKM protocol, Brinzea et al. 2022: N = 50) instead writes each whole
trial time-normalised, no window, no padding (dataset_info trial_steps = N; imu_rate_hz and
pose_rate_hz then name the source rates, 50 Hz and Kinect's nominal 30 fps):
  imu    the real sensor's whole recording resampled to N samples with scipy.signal.resample
         (FFT), as the reference's InertialSampler does, still in SI units (the reference
         keeps the raw g and deg/s; resampling is linear, so the two differ by the unit factor
         only). Simulated locations, if asked for, are simulated on the full-rate skeleton as
         above and then resampled the same way.
  pose   the whole raw skeleton resampled to N frames with scipy.signal.resample along time,
         as the reference's SkeletonSampler does: Kinect camera frame as stored (metres, y up),
         not turned z-up and not root-relative, joints in the dataset's order. Each modality is
         resampled over its own length; the two are not aligned beyond that, as in the reference.
  The reference recentres the skeleton on joint 2 (spine) of the *raw* first frame and divides
  by the raw first frame's joint 1 - joint 2 distance before resampling; both are constant
  over the trial, so doing it after resampling is the same only if the anchor comes from the
  raw first frame, not the resampled one (FFT resampling treats the trial as periodic, so its
  first step mixes in the last frame). That recentring is left to the trainer.
"""

from __future__ import annotations

import collections
import dataclasses

from absl import app
from absl import flags
import numpy as np
from scipy import signal

from data_prep import conversion
from data_prep import motion_text
from data_prep import text
from mujo_jax import console
from mujo_jax import records
from mujo_jax.downstream import utd_mhad as utd_mhad_windows
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import geometry
from mujo_jax.sources import utd_mhad

SKELETON = "kinect_v1_20"
POSE_SKELETONS = ("kinect_v1_20", "h36m17")
TEXT_SOURCES = {
    "actions": "the action description (utd_mhad.ACTIONS), which names the class",
    "motion": "a caption of the trial's skeleton movement (data_prep/motion_text.py); no "
              "label or action description read",
}
# H36M17 joint -> the Kinect joint it is (module docstring); "neck" and "head" are computed.
KINECT_TO_H36M17 = {
    "pelvis": "hip_center", "right_hip": "right_hip", "right_knee": "right_knee",
    "right_ankle": "right_ankle", "left_hip": "left_hip", "left_knee": "left_knee",
    "left_ankle": "left_ankle", "spine": "spine", "thorax": "shoulder_center", "neck": "head",
    "left_shoulder": "left_shoulder", "left_elbow": "left_elbow", "left_wrist": "left_wrist",
    "right_shoulder": "right_shoulder", "right_elbow": "right_elbow",
    "right_wrist": "right_wrist"}
SMOOTHING_S = 0.3
REST_S = 0.1  # the real sensor's padding: mean acceleration over this much of each end


@dataclasses.dataclass(frozen=True)
class Settings:
  info: records.DatasetInfo
  simulated_locations: bool
  smoothing_s: float
  pose_skeleton: str = SKELETON
  text: str = "actions"


def resample_trial(x: np.ndarray, steps: int, axis: int = 0) -> np.ndarray:
  """A whole trial's samples along `axis` -> `steps` samples, by FFT (scipy.signal.resample),
  the reference's InertialSampler / SkeletonSampler."""
  return signal.resample(x, steps, axis=axis)


def parse_splits(spec: str) -> dict[str, tuple[int, ...]]:
  """"train:1,3,5;val:7" -> {"train": (1, 3, 5), "val": (7,)}; a subject in one split only."""
  splits, owner = {}, {}
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    name, _, subjects = part.partition(":")
    try:
      ids = tuple(int(s) for s in subjects.split(",") if s.strip())
    except ValueError as e:
      raise ValueError(f"--splits {spec!r}: {part!r} is not name:subject,subject,...") from e
    if not name.strip() or not ids:
      raise ValueError(f"--splits {spec!r}: {part!r} is not name:subject,subject,...")
    for s in ids:
      if s in owner:
        raise ValueError(f"--splits {spec!r}: subject {s} in both {owner[s]!r} and {name!r}")
      owner[s] = name.strip()
    splits[name.strip()] = ids
  return splits


def kinect_to_h36m17(positions: np.ndarray) -> np.ndarray:
  """[T, 20, 3] Kinect v1 positions -> [T, 17, 3] in H36M17 order (module docstring)."""
  kinect = skeletons.get_skeleton(SKELETON)
  h36m = skeletons.get_skeleton("h36m17")
  out = np.empty(positions.shape[:1] + (h36m.num_joints, 3), positions.dtype)
  for j, name in enumerate(h36m.joint_names):
    if name != "head":
      out[:, j] = positions[:, kinect.index(KINECT_TO_H36M17[name])]
  head = positions[:, kinect.index("head")]
  out[:, h36m.index("head")] = head + 0.5 * (head - positions[:, kinect.index("shoulder_center")])
  return out


def pad_at_rest(positions: np.ndarray, real: np.ndarray, window: int, rate_hz: float
                ) -> tuple[np.ndarray, np.ndarray, int]:
  """Centres a trial in `window` samples: positions [T, J, 3] and real [T, 6] on one grid ->
  ([window, J, 3], [window, 6], samples cut (> 0) or padded (< 0)). See module docstring."""
  n = len(real)
  if n >= window:
    start = (n - window) // 2
    return positions[start:start + window], real[start:start + window], n - window
  before, after = (window - n) // 2, window - n - (window - n) // 2
  rest = max(1, int(round(REST_S * rate_hz)))
  pad_pos = np.pad(positions, ((before, after), (0, 0), (0, 0)), mode="edge")
  head = np.concatenate([real[:rest, :3].mean(axis=0), np.zeros(3)])
  tail = np.concatenate([real[-rest:, :3].mean(axis=0), np.zeros(3)])
  pad_real = np.concatenate([np.tile(head, (before, 1)), real, np.tile(tail, (after, 1))])
  return pad_pos, pad_real, n - window


def aligned_positions(trial, real: np.ndarray, skel: np.ndarray) -> np.ndarray:
  """The skeleton stretched over the inertial recording, z up, on the inertial grid ->
  [len(real), 20, 3] (module docstring)."""
  fps = utd_mhad.aligned_fps(len(skel), len(real))
  t_grid = np.arange(len(real)) / utd_mhad.INERTIAL_HZ
  positions = conversion.resample_positions(np.arange(len(skel)) / fps,
                                            geometry.to_z_up(skel, utd_mhad.UP), t_grid,
                                            max_gap_s=1.0)
  # The skeleton's last frame lies one skeleton frame before the inertial recording ends:
  # hold it over those last few grid samples.
  covered = np.flatnonzero(np.isfinite(positions).all(axis=(1, 2)))
  if not len(covered) or covered[0] != 0 or len(real) - 1 - covered[-1] > np.ceil(
      utd_mhad.INERTIAL_HZ / fps) + 1:
    raise conversion.clip_error(trial.name, trial.skeleton_path,
                                "skeleton does not cover the inertial recording")
  positions[covered[-1] + 1:] = positions[covered[-1]]
  return positions


def simulate_others(trial, settings: Settings, positions: np.ndarray) -> np.ndarray:
  """The virtual IMU at every location but the real one -> [S - 1, len(positions), 6]."""
  info = settings.info
  others = [loc for loc in info.imu_locations if loc != trial.sensor_location]
  try:
    return virtual_imu.simulate_imu(positions, fps=info.imu_rate_hz, skeleton=SKELETON,
                                    locations=others, rate_hz=info.imu_rate_hz,
                                    smoothing_s=settings.smoothing_s)
  except ValueError as e:
    raise conversion.clip_error(trial.name, trial.skeleton_path,
                                f"virtual IMU failed: {e}") from e


def make_clip(task) -> conversion.ClipResult:
  """One trial -> one record. task = (Trial, Settings, text_ids, text_len)."""
  trial, settings, text_ids, text_len = task
  info = settings.info
  real = utd_mhad.load_inertial(trial)                              # [T_i, 6] SI, 50 Hz
  skel = utd_mhad.load_skeleton(trial)                              # [T_s, 20, 3] m
  if info.imu_rate_hz != utd_mhad.INERTIAL_HZ:
    raise ValueError(f"imu_rate_hz must be {utd_mhad.INERTIAL_HZ} for UTD-MHAD")
  result = conversion.ClipResult()
  result.counts["clips"] += 1
  locations = info.imu_locations
  real_index = locations.index(trial.sensor_location)
  others = [locations.index(loc) for loc in locations if loc != trial.sensor_location]
  imu = np.zeros((len(locations), info.imu_window, 6), np.float32)
  mask = np.zeros(len(locations), np.int64)
  mask[real_index] = 1
  if info.trial_steps:
    imu[real_index] = resample_trial(real, info.trial_steps)
    if settings.simulated_locations:
      positions = aligned_positions(trial, real, skel)
      imu[others] = resample_trial(simulate_others(trial, settings, positions),
                                   info.trial_steps, axis=1)
      mask[:] = 1
    pose = resample_trial(skel, info.trial_steps)                   # camera frame, as stored
  else:
    positions = aligned_positions(trial, real, skel)
    positions, real, cut = pad_at_rest(positions, real, info.imu_window, info.imu_rate_hz)
    if cut > 0:
      result.counts["trials_cropped"] += 1
      result.details = {"clip_id": trial.name, "cropped_s": round(cut / info.imu_rate_hz, 3)}
    imu[real_index] = real
    if settings.text == "motion":
      caption = motion_text.describe(kinect_to_h36m17(positions), info.imu_rate_hz,
                                     seed=utd_mhad_windows.trial_id(trial))
      ids, lens = text.encode([caption], info.text_len)
      text_ids, text_len = ids[0], int(lens[0])
    if settings.simulated_locations:
      imu[others] = simulate_others(trial, settings, positions)
      mask[:] = 1
    pose = positions[::conversion.pose_step(info)]
    if settings.pose_skeleton == "h36m17":
      pose = conversion.root_relative(kinect_to_h36m17(pose), "h36m17")
    else:
      pose = conversion.root_relative(pose, SKELETON)
  result.examples.append({
      "imu": imu, "imu_location_mask": mask, "pose": pose,
      "text_ids": text_ids, "text_len": text_len, "label": trial.action - 1,
      "clip_id": trial.name, "window_index": 0,
  })
  return result


def build(utd_mhad_dir: str, out_dir: str, *, simulated_locations: bool = True,
          splits=utd_mhad.SUBJECT_SPLITS, subjects=None, actions=None, window_s: float = 5.0,
          smoothing_s: float = SMOOTHING_S, trial_steps: int = 0, workers: int | None = None,
          pose_skeleton: str = SKELETON, text_source: str = "actions", text_len: int = 64,
          records_per_shard: int = 256, imu_locations=virtual_imu.SENSOR_LOCATIONS,
          log=print) -> conversion.Report:
  """Converts the trials of the chosen subjects and actions into out_dir (module docstring);
  trial_steps > 0: whole trials resampled to that many steps instead of window_s windows."""
  if trial_steps < 0:
    raise ValueError(f"trial_steps must be >= 0 (0: windows of window_s), got {trial_steps}")
  if pose_skeleton not in POSE_SKELETONS:
    raise ValueError(f"pose_skeleton {pose_skeleton!r} is not one of {POSE_SKELETONS}")
  if text_source not in TEXT_SOURCES:
    raise ValueError(f"text_source {text_source!r} is not one of {TEXT_SOURCES}")
  if trial_steps and text_source != "actions":
    raise ValueError("text_source 'motion' captions windows; trial_steps keeps whole trials")
  if trial_steps and pose_skeleton != SKELETON:
    raise ValueError(f"trial_steps keeps the raw Kinect skeleton; pose_skeleton "
                     f"{pose_skeleton!r} applies to windows only")
  unpaired: list[str] = []
  trials = utd_mhad.list_trials(utd_mhad_dir, unpaired)
  if subjects:
    trials = [t for t in trials if t.subject in set(subjects)]
  if actions:
    trials = [t for t in trials if t.action in set(actions)]
  if not trials:
    raise conversion.ConversionError(f"{utd_mhad_dir}: no trials of subjects {subjects} and "
                                     f"actions {actions}")
  owner = {s: name for name, ids in splits.items() for s in ids}
  missing = sorted({t.subject for t in trials} - set(owner))
  if missing:
    raise conversion.ConversionError(f"subjects {missing} are in no split of {dict(splits)}")
  for t in trials:
    sensor = t.sensor_location
    if sensor not in imu_locations:
      raise conversion.ConversionError(f"trial {t.name}: its real sensor location {sensor!r} "
                                       f"is not among imu_locations {list(imu_locations)}")
  tokenizer = text.load_tokenizer()
  if trial_steps:
    timing = dict(trial_steps=trial_steps, pose_rate_hz=utd_mhad.NOMINAL_SKELETON_FPS)
    pose_units = (f"metres, Kinect camera frame as stored (y up), not root-relative; whole "
                  f"trial resampled to {trial_steps} frames (scipy.signal.resample)")
    layout = (f"whole trials, each modality resampled to {trial_steps} steps "
              "(scipy.signal.resample, as CMC-CMKM)")
  else:
    timing = {}
    pose_units = ("metres, root-relative (root: hip_center), Kinect camera frame turned so "
                  "that +z is up")
    if pose_skeleton == "h36m17":
      pose_units += "; mapped to h36m17 (convert_utd_mhad.KINECT_TO_H36M17)"
    layout = "trials centred and padded at rest"
  info = records.DatasetInfo(
      name="utd_mhad", imu_locations=tuple(imu_locations),
      joint_names=skeletons.get_skeleton(pose_skeleton).joint_names,
      class_names=utd_mhad.ACTIONS,
      tokenizer=text.TOKENIZER_NAME, vocab_size=tokenizer.vocab_size,
      pad_id=tokenizer.pad_token_id, skeleton=pose_skeleton, window_s=window_s,
      text_len=text_len, **timing,
      pose_units=pose_units, video_features="none (UTD-MHAD has no video features)",
      source=("UTD-MHAD (Chen et al., ICIP 2015), data_prep/convert_utd_mhad.py: real Kinect "
              "skeleton; real IMU at right_wrist (a1-a21) / right_thigh (a22-a27), other "
              f"locations {'simulated, mask 1' if simulated_locations else 'zero, mask 0'}; "
              f"{layout}; text: {TEXT_SOURCES[text_source]}"))
  text.check_lengths(tokenizer, utd_mhad.ACTIONS, text_len)
  ids, lens = text.tokenize(tokenizer, utd_mhad.ACTIONS, info.text_len)
  settings = Settings(info, simulated_locations, smoothing_s, pose_skeleton, text_source)
  tasks = collections.defaultdict(list)
  for t in trials:
    tasks[owner[t.subject]].append((t, settings, ids[t.action - 1], int(lens[t.action - 1])))
  report_settings = {"simulated_locations": simulated_locations,
                     "splits": {k: list(v) for k, v in splits.items()},
                     "subjects": sorted({t.subject for t in trials}),
                     "actions": sorted({t.action for t in trials}), "window_s": window_s,
                     "smoothing_s": smoothing_s, "trial_steps": trial_steps,
                     "pose_skeleton": pose_skeleton, "text": text_source,
                     "unpaired_files_skipped": len(unpaired)}
  return conversion.convert(out_dir, info, tasks, make_clip, workers=workers,
                            records_per_shard=records_per_shard, settings=report_settings,
                            log=log, name="convert_utd_mhad")


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("utd_mhad_dir", None, "UTD-MHAD root (Inertial/, Skeleton/).",
                      required=True)
  flags.DEFINE_string("out_dir", None, "Where to write the dataset.", required=True)
  flags.DEFINE_bool("simulated_locations", True, "Mark the simulated sensor locations as "
                    "available (mask 1); false: zero them, mask 0 (real sensor only).")
  flags.DEFINE_string("splits", ";".join(f"{k}:{','.join(map(str, v))}"
                                         for k, v in utd_mhad.SUBJECT_SPLITS.items()),
                      "Subjects per split, e.g. 'train:1,3,5;val:7;test:2,4,6,8'.")
  flags.DEFINE_list("subjects", None, "Convert only these subjects (default: all).")
  flags.DEFINE_list("actions", None, "Convert only these actions, 1-27 (default: all).")
  flags.DEFINE_float("window_s", 5.0, "Window length in seconds.")
  flags.DEFINE_float("smoothing_s", SMOOTHING_S, "Virtual IMU smoothing window (s).")
  flags.DEFINE_integer("trial_steps", 0, "> 0: one record per whole trial, both modalities "
                       "resampled to this many steps (CMC-CMKM: 50); 0: windows of window_s.")
  flags.DEFINE_enum("pose_skeleton", SKELETON, POSE_SKELETONS, "Skeleton of the written pose: "
                    "Kinect's own 20 joints, or mapped to h36m17 (module docstring).")
  flags.DEFINE_enum("text", "actions", list(TEXT_SOURCES), "Each trial's text: its action "
                    "description, or a caption of its skeleton's movement.")
  flags.DEFINE_integer("text_len", 64, "Token ids per text, [CLS] and [SEP] included (a "
                       "longer text is an error, never cut).")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all CPUs; 0: in-process).")
  flags.DEFINE_integer("records_per_shard", 256, "Records per TFRecord shard.")


def main(argv):
  del argv
  console.setup()
  build(FLAGS.utd_mhad_dir, FLAGS.out_dir, simulated_locations=FLAGS.simulated_locations,
        splits=parse_splits(FLAGS.splits),
        subjects=[int(s) for s in FLAGS.subjects] if FLAGS.subjects else None,
        actions=[int(a) for a in FLAGS.actions] if FLAGS.actions else None,
        window_s=FLAGS.window_s, smoothing_s=FLAGS.smoothing_s, trial_steps=FLAGS.trial_steps,
        workers=FLAGS.workers, pose_skeleton=FLAGS.pose_skeleton, text_source=FLAGS.text,
        text_len=FLAGS.text_len, records_per_shard=FLAGS.records_per_shard)


if __name__ == "__main__":
  define_flags()
  app.run(main)
