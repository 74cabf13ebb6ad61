r"""Converts FiMAD-style sources (3D pose, video features, language) to the record format.

  python -m data_prep.convert_fimad --manifest=clips.jsonl --split_file=train_val_split.json \
      --out_dir=/data/fimad [--workers=N] [--up=0,0,1] [--skip_unsplit]

The manifest (read and checked by `mujo_jax.sources.fimad`) is JSON Lines, one clip per line;
paths are relative to --data_root (default: the manifest's directory):
  {"clip_id": "youtubeID___3", "pose": "pose/youtubeID___3.npy", "pose_fps": 25,
   "skeleton": "h36m17", "video": "video/youtubeID___3.npy", "video_rate_hz": 1.6,
   "language": {"chapter": ..., "normalized_chapter": ..., "subtitles": ..., "description": ...},
   "label": "squats"}
  pose   .npy float [T, J, 3], metres, J = the skeleton's joints (mujo_jax/sim/skeletons.py; all
         clips share one skeleton), in a world frame whose vertical is --up (default +z; e.g.
         0,-1,0 for camera coordinates with y pointing down). NaN marks a missing joint.
  video  optional .npy float [T_v, 1536] (HERO: CLIP-512 + S3D-1024), feature j covering
         [j, j+1) / video_rate_hz seconds of the clip, which starts with the first pose frame.
  language  the MuJo authors' language_data.json entry; the text is the non-empty fields of
         --text_fields joined by ". " (default "{normalized_chapter}. {description}").
  label  optional class name (classes: --class_names, default the sorted labels present).

Per clip: pose -> rotated so that +z is up -> spline-resampled to the 50 Hz grid (gaps longer
than --max_gap_s stay unusable) -> 5 s windows; virtual IMU at all 16 locations simulated per
run of consecutive windows (data_prep/conversion.py); pose every 2nd grid sample (25 Hz),
root-relative; video features picked at 8 steps per window; text tokenised once per clip.
Windows with an unusable sample (missing joints, a short trailing piece) are dropped and
counted; counts and the affected clips go to conversion_report.json and the final log line.

The split file is FiMAD's official {"train": [...], "val": [...]}; every manifest clip must be
in it (or pass --skip_unsplit to leave the others out, counted). Bad inputs (a missing file,
a wrong shape, an unknown skeleton, a malformed line) stop the run with a message naming the
clip and the file; nothing is written before the manifest has been checked, and a run that
fails later leaves no dataset_info.json.
"""

from __future__ import annotations

import collections
import dataclasses
import os

from absl import app
from absl import flags
import numpy as np

from data_prep import conversion
from data_prep import fimad_split
from data_prep import text
from mujo_jax import console
from mujo_jax import records
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import fimad
from mujo_jax.sources import geometry
from mujo_jax.sources import resampling


@dataclasses.dataclass(frozen=True)
class Settings:
  info: records.DatasetInfo
  up: tuple[float, float, float]
  max_gap_s: float
  smoothing_s: float


def make_clip(task) -> conversion.ClipResult:
  """One clip -> its windows (module docstring).

  task = (ClipSpec, Settings, text_ids [text_len] or None, text_len, label index or -1).
  """
  spec, settings, text_ids, text_len, label = task
  info = settings.info
  skel = skeletons.get_skeleton(spec.skeleton)
  result = conversion.ClipResult()
  pose = fimad.load_pose(spec)
  video = None if spec.video_path is None else fimad.load_video(spec, info.video_dim)
  times = np.arange(len(pose)) / spec.pose_fps
  t_grid = resampling.grid(times[-1], info.imu_rate_hz)
  positions = conversion.resample_positions(times, geometry.to_z_up(pose, settings.up), t_grid,
                                            settings.max_gap_s)
  window = info.imu_window
  total = len(t_grid) // window
  kept = conversion.usable_windows(np.isfinite(positions).all(axis=(1, 2)), window)
  imu, failed = conversion.simulate_windows(positions, kept, window, skel, info.imu_locations,
                                            info.imu_rate_hz, settings.smoothing_s)
  result.counts["clips"] += 1
  if total == 0:
    result.counts["clips_shorter_than_window"] += 1
  result.counts["windows_dropped_pose_gap"] += total - len(kept)
  result.counts["windows_dropped_simulator"] += sum(len(ws) for ws, _ in failed)
  dropped = sorted(set(range(total)) - set(imu))
  if dropped:
    result.details = {"clip_id": spec.clip_id, "windows_dropped": dropped,
                      "simulator_errors": [reason for _, reason in failed]}
  step = conversion.pose_step(info)
  for w in sorted(imu):
    video_w = None
    if video is not None:
      video_w = conversion.video_window(video, spec.video_rate_hz, w * info.window_s,
                                        info.window_s, info.video_steps)
      result.counts["windows_without_video"] += video_w is None
    result.examples.append({
        "imu": imu[w],
        "pose": conversion.root_relative(positions[w * window:(w + 1) * window:step], skel),
        "video": video_w,
        "text_ids": text_ids, "text_len": text_len,
        "label": label, "clip_id": spec.clip_id, "window_index": w,
    })
  result.counts["windows_without_text"] += len(result.examples) if text_ids is None else 0
  return result


def build(manifest: str, split_file: str, out_dir: str, *, data_root: str | None = None,
          workers: int | None = None, records_per_shard: int = 256,
          up=(0.0, 0.0, 1.0), skip_unsplit: bool = False, max_gap_s: float = 0.3,
          smoothing_s: float = 0.2, text_fields=fimad.TEXT_FIELDS, class_names=None,
          imu_locations=virtual_imu.SENSOR_LOCATIONS, name: str = "fimad",
          log=print) -> conversion.Report:
  """Converts the manifest's clips into out_dir (module docstring)."""
  specs = fimad.read_manifest(manifest, data_root, tuple(text_fields))
  clip_split = fimad_split.load_split(split_file)
  unsplit = [s.clip_id for s in specs if s.clip_id not in clip_split]
  if unsplit and not skip_unsplit:
    raise conversion.ConversionError(
        f"{len(unsplit)} clips of {manifest} are not in the split file {split_file}, e.g. "
        f"{unsplit[:5]}; pass --skip_unsplit to leave them out")
  specs = [s for s in specs if s.clip_id in clip_split]
  if not specs:
    raise conversion.ConversionError(f"no clip of {manifest} is in {split_file}")
  labels = sorted({s.label for s in specs if s.label is not None})
  class_names = tuple(class_names) if class_names else tuple(labels)
  for s in specs:
    if s.label is not None and s.label not in class_names:
      raise conversion.ConversionError(f"clip {s.clip_id!r} ({manifest}): label {s.label!r} is "
                                       f"not in the class names {list(class_names)}")
  tokenizer = text.load_tokenizer()
  skel = skeletons.get_skeleton(specs[0].skeleton)
  info = records.DatasetInfo(
      name=name, imu_locations=tuple(imu_locations), joint_names=skel.joint_names,
      class_names=class_names, tokenizer=text.TOKENIZER_NAME, vocab_size=tokenizer.vocab_size,
      pad_id=tokenizer.pad_token_id, skeleton=skel.name,
      pose_units="metres, root-relative (root: pelvis), world frame turned so that +z is up",
      source=(f"FiMAD-style manifest {os.path.basename(manifest)}: pose -> virtual IMU "
              f"(data_prep/convert_fimad.py); text = {' + '.join(text_fields)}"))
  texts = [s.text for s in specs if s.text is not None]
  ids, lens = text.tokenize(tokenizer, texts, info.text_len) if texts else ((), ())
  tokens = dict(zip([s.clip_id for s in specs if s.text is not None], zip(ids, lens)))
  settings = Settings(info, tuple(float(v) for v in up), max_gap_s, smoothing_s)
  splits = collections.defaultdict(list)
  for s in sorted(specs, key=lambda s: s.clip_id):
    text_ids, text_len = tokens.get(s.clip_id, (None, 0))
    label = class_names.index(s.label) if s.label is not None else -1
    splits[clip_split[s.clip_id]].append((s, settings, text_ids, int(text_len), label))
  report_settings = {"manifest": os.path.basename(manifest),
                     "split_file": os.path.basename(split_file), "up": list(settings.up),
                     "max_gap_s": max_gap_s, "smoothing_s": smoothing_s,
                     "text_fields": list(text_fields), "skip_unsplit": skip_unsplit,
                     "clips_not_in_split_file": len(unsplit),
                     "split_clips_not_in_manifest": len(set(clip_split) - {s.clip_id
                                                                            for s in specs})}
  report = conversion.convert(out_dir, info, splits, make_clip, workers=workers,
                              records_per_shard=records_per_shard, settings=report_settings,
                              log=log, name="convert_fimad")
  if unsplit:
    log(f"convert_fimad: skipped {len(unsplit)} clips not in {split_file}")
  return report


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("manifest", None, "Clip manifest (JSON Lines).", required=True)
  flags.DEFINE_string("split_file", None, "FiMAD split file (train_val_split.json).",
                      required=True)
  flags.DEFINE_string("out_dir", None, "Where to write the dataset.", required=True)
  flags.DEFINE_string("data_root", None, "Root of the manifest's relative paths "
                      "(default: the manifest's directory).")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all CPUs; 0: in-process).")
  flags.DEFINE_integer("records_per_shard", 256, "Records per TFRecord shard.")
  flags.DEFINE_list("up", ["0", "0", "1"], "World up vector of the pose files.")
  flags.DEFINE_bool("skip_unsplit", False, "Leave out (and count) clips missing from the "
                    "split file instead of stopping.")
  flags.DEFINE_float("max_gap_s", 0.3, "Longest time between two valid frames of a joint that "
                     "is interpolated; windows across longer gaps are dropped.")
  flags.DEFINE_float("smoothing_s", 0.2, "Virtual IMU smoothing window (s).")
  flags.DEFINE_list("text_fields", list(fimad.TEXT_FIELDS), "Language fields joined into the text.")
  flags.DEFINE_list("class_names", None, "Class names in label order (default: sorted labels).")
  flags.DEFINE_list("imu_locations", list(virtual_imu.SENSOR_LOCATIONS), "Sensor locations.")


def main(argv):
  del argv
  console.setup()
  build(FLAGS.manifest, FLAGS.split_file, FLAGS.out_dir, data_root=FLAGS.data_root,
        workers=FLAGS.workers, records_per_shard=FLAGS.records_per_shard,
        up=tuple(float(v) for v in FLAGS.up), skip_unsplit=FLAGS.skip_unsplit,
        max_gap_s=FLAGS.max_gap_s, smoothing_s=FLAGS.smoothing_s,
        text_fields=tuple(FLAGS.text_fields), class_names=FLAGS.class_names,
        imu_locations=tuple(FLAGS.imu_locations))


if __name__ == "__main__":
  define_flags()
  app.run(main)
