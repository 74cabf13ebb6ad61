r"""Writes the embedded demo dataset: a small, complete FiMAD-format dataset.

  python -m data_prep.make_demo --out_dir=/tmp/mujo_demo

Procedurally animated skeletons perform MM-Fit's ten exercises with per-clip
variation of body, tempo, range of motion, facing direction and noise
(mujo_jax/sim/motion.py). From each clip's motion we derive the four modalities:
  imu    virtual IMU at every sensor location (mujo_jax/sim/virtual_imu.py, the
         simulator real pose goes through too)
  pose   the skeleton at 25 Hz, root-relative
  video  synthetic stand-ins for HERO features (mujo_jax/sim/synthetic_video.py)
  text   one of several descriptions of the exercise, pre-tokenised
Deterministic for a seed, whatever the number of workers: each clip draws from
its own generator seeded by (seed, exercise, clip).
"""

from __future__ import annotations

import multiprocessing
import os
import time

from absl import app
from absl import flags
import numpy as np
import threadpoolctl

from data_prep.dataset_writer import DatasetWriter
from data_prep import fimad_split
from data_prep import text
from mujo_jax import console
from mujo_jax import records
from mujo_jax.sim import motion
from mujo_jax.sim.skeletons import get_skeleton
from mujo_jax.sim import synthetic_video
from mujo_jax.sim import virtual_imu
from mujo_jax import storage

SKELETON = "h36m17"


def demo_info(imu_locations=virtual_imu.SENSOR_LOCATIONS, vocab_size=30522, pad_id=0,
              text_len=64) -> records.DatasetInfo:
  return records.DatasetInfo(
      name="mujo_demo", imu_locations=tuple(imu_locations),
      joint_names=get_skeleton(SKELETON).joint_names, class_names=motion.EXERCISES,
      tokenizer=text.TOKENIZER_NAME, vocab_size=vocab_size, pad_id=pad_id, skeleton=SKELETON,
      text_len=text_len,
      video_features=("SYNTHETIC stand-in for HERO CLIP-512 + S3D-1024, rendered from the "
                      "skeleton motion by a fixed random network (data_prep/synthetic_video.py)"),
      source="procedurally animated exercises (data_prep/make_demo.py)")


def make_clip(task) -> list[dict]:
  """One clip -> its windows as example dicts for records.encode_example."""
  (seed, exercise_index, clip_index, clip_s, info, text_ids, text_lens) = task
  exercise = motion.EXERCISES[exercise_index]
  rng = np.random.default_rng([seed, exercise_index, clip_index])
  duration = rng.uniform(*clip_s)
  num_windows = int(duration // info.window_s)
  # One extra second each side: the IMU simulator's smoothing needs context.
  positions = motion.synthesize(exercise, num_windows * info.window_s + 2.0,
                                info.imu_rate_hz, rng)
  imu = virtual_imu.simulate_imu(positions, fps=info.imu_rate_hz, skeleton=SKELETON,
                                 locations=info.imu_locations, rate_hz=info.imu_rate_hz)
  margin_imu = int(info.imu_rate_hz)
  step = int(round(info.imu_rate_hz / info.pose_rate_hz))
  pose = positions[::step] - positions[::step, :1]
  margin_pose = int(info.pose_rate_hz)
  description = int(rng.integers(len(text_ids)))
  clip_id = f"demo{exercise_index:02d}{clip_index:04d}___0"
  examples = []
  for w in range(num_windows):
    i0 = margin_imu + w * info.imu_window
    p0 = margin_pose + w * info.pose_window
    pose_w = pose[p0:p0 + info.pose_window]
    examples.append({
        "imu": imu[:, i0:i0 + info.imu_window],
        "pose": pose_w,
        "video": synthetic_video.video_features(pose_w, info.video_steps, rng),
        "text_ids": text_ids[description], "text_len": text_lens[description],
        "label": exercise_index, "clip_id": clip_id, "window_index": w,
    })
  return examples


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("out_dir", None, "Where to write the dataset.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed; the same seed gives the same bytes.")
  flags.DEFINE_integer("clips_per_exercise", 30, "Clips per exercise (train + val).")
  flags.DEFINE_float("val_fraction", 0.2, "Share of each exercise's clips in the val split.")
  flags.DEFINE_list("clip_seconds", ["15", "35"], "Clip duration range in seconds.")
  flags.DEFINE_list("imu_locations", list(virtual_imu.SENSOR_LOCATIONS), "Sensor locations.")
  flags.DEFINE_string("split_file", None,
                      "Optional split file in FiMAD's format ({'train': [...], 'val': [...]}) "
                      "naming every demo clip; by default one is made and written beside the data.")
  flags.DEFINE_integer("workers", None, "Worker processes (default: all CPUs).")
  flags.DEFINE_integer("records_per_shard", 256, "Records per TFRecord shard.")
  flags.DEFINE_integer("text_len", 64, "Token ids per text, [CLS] and [SEP] included.")


def _one_blas_thread() -> None:
  """Pool worker start-up: clips run in parallel, so each worker's BLAS gets one thread.

  The per-clip matrices are small; BLAS threads of several workers on few cores
  spend more time waiting for each other than computing.
  """
  threadpoolctl.threadpool_limits(1)


def build(out_dir: str, seed: int = 0, clips_per_exercise: int = 30, val_fraction: float = 0.2,
          clip_seconds=(15.0, 35.0), imu_locations=virtual_imu.SENSOR_LOCATIONS,
          split_file: str | None = None, workers: int | None = None,
          records_per_shard: int = 256, text_len: int = 64, log=print) -> records.DatasetInfo:
  """Builds the demo dataset in out_dir (see module docstring); text_len: ids per text
  (a description longer than that is an error, never cut)."""
  start = time.time()
  tokenizer = text.load_tokenizer()
  info = demo_info(imu_locations, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_token_id,
                   text_len=text_len)
  text.check_lengths(tokenizer, [d for ds in text.DESCRIPTIONS.values() for d in ds], text_len)
  tokens = {ex: text.tokenize(tokenizer, text.DESCRIPTIONS[ex], info.text_len)
            for ex in motion.EXERCISES}
  num_val = int(round(clips_per_exercise * val_fraction))
  tasks, clip_split = [], {}
  for e, exercise in enumerate(motion.EXERCISES):
    for c in range(clips_per_exercise):
      clip_id = f"demo{e:02d}{c:04d}___0"
      clip_split[clip_id] = "val" if c >= clips_per_exercise - num_val else "train"
      tasks.append((seed, e, c, tuple(map(float, clip_seconds)), info) + tokens[exercise])
  if split_file:
    given = fimad_split.load_split(split_file)
    missing = sorted(set(clip_split) - set(given))
    if missing:
      raise ValueError(f"{split_file} does not name demo clips {missing[:3]}...")
    clip_split = {c: given[c] for c in clip_split}
  writer = DatasetWriter(out_dir, info, records_per_shard=records_per_shard)
  done = 0

  def stream(split_tasks):
    nonlocal done
    for examples in pool.imap(make_clip, split_tasks, chunksize=2):
      yield from examples
      done += 1
      if done % 50 == 0 or done == len(tasks):
        log(f"make_demo: {done}/{len(tasks)} clips ({time.time() - start:.0f} s)")

  with multiprocessing.get_context("spawn").Pool(workers or os.cpu_count(),
                                                 initializer=_one_blas_thread) as pool:
    for split in sorted(set(clip_split.values())):
      writer.write_split(split, stream([t for t, c in zip(tasks, clip_split.values())
                                        if c == split]))
  fimad_split.write_split(storage.join(out_dir, "train_val_split.json"), clip_split)
  info = writer.finish()
  sizes = {s: v.num_examples for s, v in info.splits.items()}
  log(f"make_demo: wrote {sizes} windows of {len(tasks)} clips to {out_dir} "
      f"in {time.time() - start:.0f} s")
  return info


def main(argv):
  del argv
  console.setup()
  build(FLAGS.out_dir, FLAGS.seed, FLAGS.clips_per_exercise, FLAGS.val_fraction,
        tuple(float(s) for s in FLAGS.clip_seconds), tuple(FLAGS.imu_locations),
        FLAGS.split_file, FLAGS.workers, FLAGS.records_per_shard, FLAGS.text_len)


if __name__ == "__main__":
  define_flags()
  app.run(main)
