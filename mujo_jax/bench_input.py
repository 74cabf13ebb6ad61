r"""Throughput of the input pipeline alone (no model), one JSON line per worker count.

  python -m mujo_jax.bench_input --data_dir=/tmp/mujo_demo --batch_size=256 \
      --num_workers=0,1,2

The data may be on gs:// (then --remote_cache_mb and --remote_block_mb apply).

examples/s is the median over windows of `--window` batches after `--warmup`
batches, so start-up (worker spawn, page cache) is excluded.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from mujo_jax import input_pipeline
from mujo_jax import records

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("data_dir", None, "FiMAD-format dataset directory.", required=True)
  flags.DEFINE_string("split", "train", "Split to read.")
  flags.DEFINE_integer("batch_size", 256, "Per-process batch size.")
  flags.DEFINE_list("num_workers", ["0", "1", "2"], "Worker process counts to measure.")
  flags.DEFINE_integer("warmup", 20, "Batches skipped before timing (more than the prefetch buffer holds).")
  flags.DEFINE_integer("window", 10, "Batches per timing window.")
  flags.DEFINE_integer("windows", 5, "Timing windows per worker count.")
  flags.DEFINE_string("imu_locations", "random", "'all', 'random' or comma-separated names.")
  flags.DEFINE_float("remote_cache_mb", 256, "gs:// data: block cache per process (MiB).")
  flags.DEFINE_float("remote_block_mb", 8, "gs:// data: block size (MiB).")


def measure(num_workers: int) -> dict:
  locations = FLAGS.imu_locations
  if locations not in ("all", "random"):
    locations = tuple(locations.split(","))
  ds = input_pipeline.make_dataset(
      FLAGS.data_dir, FLAGS.split, batch_size=FLAGS.batch_size, seed=0,
      augment_config=input_pipeline.AugmentConfig(imu_locations=locations, modality_dropout=0.1),
      remote_block_bytes=int(FLAGS.remote_block_mb * 2**20),
      remote_cache_bytes=int(FLAGS.remote_cache_mb * 2**20))
  it = input_pipeline.make_iterator(ds, num_workers=num_workers)
  for _ in range(FLAGS.warmup):
    batch = next(it)
  rates = []
  for _ in range(FLAGS.windows):
    start = time.perf_counter()
    for _ in range(FLAGS.window):
      batch = next(it)
    rates.append(FLAGS.window * FLAGS.batch_size / (time.perf_counter() - start))
  nbytes = sum(v.nbytes for v in batch.values() if v.dtype != object) / FLAGS.batch_size
  if hasattr(it, "close"):
    it.close()
  return {"num_workers": num_workers, "batch_size": FLAGS.batch_size,
          "examples_per_s": round(float(np.median(rates)), 1),
          "examples_per_s_min_max": [round(min(rates), 1), round(max(rates), 1)],
          "bytes_per_example_out": int(nbytes), "cpu_count": os.cpu_count()}


def measure_decode_only() -> dict:
  """Parse cost alone: decode_batch over records already in memory (one core)."""
  info = records.DatasetInfo.load(FLAGS.data_dir)
  source = input_pipeline.IndexedShardSource(info.shard_paths(FLAGS.data_dir, FLAGS.split))
  payloads = [source[i][1] for i in range(min(len(source), FLAGS.batch_size))]
  times = []
  for _ in range(10):
    start = time.perf_counter()
    records.decode_batch(info, payloads)
    times.append(time.perf_counter() - start)
  return {"stage": "decode_batch only", "examples_per_s": round(len(payloads) / float(np.median(times)), 1),
          "record_bytes": int(np.mean([len(p) for p in payloads]))}


def main(argv):
  del argv
  print(json.dumps(measure_decode_only()), flush=True)
  for n in FLAGS.num_workers:
    print(json.dumps(measure(int(n))), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
