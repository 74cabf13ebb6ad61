r"""Throughput of the input pipeline alone (no model), one JSON line per mode and worker count.

  python -m mujo_jax.bench_input --data_dir=/tmp/mujo_demo --batch_size=256 \
      --num_workers=0,1 --crc_check=always,first_pass,off --cache_in_memory=false,true

The data may be on gs:// (then --remote_cache_mb and --remote_block_mb apply).

Per mode, `first_pass_examples_per_s` times the batches after the first (which
pays start-up) that hold only records read for the first time (whole reads,
CRC, layout scan, cache fill); `examples_per_s` is the median over windows of
`--window` batches once the iterator is past the first `--skip_epochs` epochs
and `--warmup` batches, so that the later-pass rate is measured past any
first reads. `examples_per_cpu_s` divides by CPU time instead of wall time
(this process's; with workers, `examples_per_worker_cpu_s` by theirs, read
from /proc on Linux): on a shared machine it moves less with the load of
others, and it is the rate one core would give. `load_avg` is the 1-minute
load before the mode.

A first line compares records.decode_batch on records in memory, fixed-layout
scan vs protobuf parse.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from mujo_jax import console
from mujo_jax import input_pipeline
from mujo_jax import records

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("data_dir", None, "FiMAD-format dataset directory.", required=True)
  flags.DEFINE_string("split", "train", "Split to read.")
  flags.DEFINE_integer("batch_size", 256, "Per-process batch size.")
  flags.DEFINE_list("num_workers", ["0", "1"], "Worker process counts to measure.")
  flags.DEFINE_list("crc_check", ["always", "first_pass", "off"], "CRC policies to measure.")
  flags.DEFINE_list("cache_in_memory", ["false", "true"], "RAM cache settings to measure.")
  flags.DEFINE_integer("skip_epochs", 2, "Epochs read before the later-pass timing starts.")
  flags.DEFINE_integer("warmup", 10, "Further batches skipped before timing (more than the "
                       "prefetch buffers hold).")
  flags.DEFINE_integer("window", 10, "Batches per timing window.")
  flags.DEFINE_integer("windows", 5, "Timing windows per mode.")
  flags.DEFINE_string("imu_locations", "random", "'all', 'random' or comma-separated names.")
  flags.DEFINE_float("remote_cache_mb", 256, "gs:// data: block cache per process (MiB).")
  flags.DEFINE_float("remote_block_mb", 8, "gs:// data: block size (MiB).")


def measure(num_workers: int, crc_check: str, cache_in_memory: bool, num_records: int) -> dict:
  locations = FLAGS.imu_locations
  if locations not in ("all", "random"):
    locations = tuple(locations.split(","))
  batch_size = FLAGS.batch_size
  load = os.getloadavg()[0]
  ds = input_pipeline.make_dataset(
      FLAGS.data_dir, FLAGS.split, batch_size=batch_size, seed=0, process_index=0,
      process_count=1, crc_check=crc_check, cache_in_memory=cache_in_memory,
      augment_config=input_pipeline.AugmentConfig(imu_locations=locations, modality_dropout=0.1),
      remote_block_bytes=int(FLAGS.remote_block_mb * 2**20),
      remote_cache_bytes=int(FLAGS.remote_cache_mb * 2**20))
  it = input_pipeline.make_iterator(ds, num_workers=num_workers)
  batch = next(it)  # start-up
  first_batches = num_records // batch_size - 1  # batches 1.. made of first reads only
  first_rate = None
  if first_batches > 0:
    start = time.perf_counter()
    for _ in range(first_batches):
      batch = next(it)
    first_rate = first_batches * batch_size / (time.perf_counter() - start)
  skip = -(-FLAGS.skip_epochs * num_records // batch_size) + FLAGS.warmup - first_batches - 1
  for _ in range(max(skip, 0)):
    batch = next(it)
  rates, cpu_rates, worker_rates = [], [], []
  for _ in range(FLAGS.windows):
    start, cpu, workers = time.perf_counter(), time.process_time(), _children_cpu_seconds()
    for _ in range(FLAGS.window):
      batch = next(it)
    examples = FLAGS.window * batch_size
    rates.append(examples / (time.perf_counter() - start))
    cpu_rates.append(examples / (time.process_time() - cpu))
    if workers is not None and num_workers:
      worker_rates.append(examples / max(_children_cpu_seconds() - workers, 1e-3))
  nbytes = sum(v.nbytes for v in batch.values() if v.dtype != object) / batch_size
  if hasattr(it, "close"):
    it.close()
  out = {"num_workers": num_workers, "crc_check": crc_check, "cache_in_memory": cache_in_memory,
         "batch_size": batch_size,
         "first_pass_examples_per_s": None if first_rate is None else round(first_rate, 1),
         "examples_per_s": round(float(np.median(rates)), 1),
         "examples_per_s_min_max": [round(min(rates), 1), round(max(rates), 1)]}
  if num_workers == 0:
    out["examples_per_cpu_s"] = round(float(np.median(cpu_rates)), 1)
  elif worker_rates:
    out["examples_per_worker_cpu_s"] = round(float(np.median(worker_rates)), 1)
  out.update({"bytes_per_example_out": int(nbytes), "cpu_count": os.cpu_count(),
              "load_avg": round(load, 1)})
  return out


def _children_cpu_seconds() -> float | None:
  """CPU seconds (user + system) of this process's descendants so far; None off Linux."""
  try:
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [os.getpid()]
    while todo:
      pid = todo.pop()
      for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
          children = [int(c) for c in f.read().split()]
        todo.extend(children)
        for child in children:
          with open(f"/proc/{child}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
          total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks
  except (OSError, ValueError):
    return None


def measure_decode_only() -> dict:
  """Parse cost alone: decode_batch over records already in memory (one core, CPU time)."""
  info = records.DatasetInfo.load(FLAGS.data_dir)
  source = input_pipeline.IndexedShardSource(info.shard_paths(FLAGS.data_dir, FLAGS.split))
  payloads = [source[i][1] for i in range(min(len(source), FLAGS.batch_size))]
  one = lambda mask: np.argmax(mask, axis=1)
  out = {"stage": "decode_batch only, one IMU location, records in memory"}
  for name, use_protobuf in (("protobuf", True), ("fixed_layout", False)):
    times = []
    for _ in range(7):
      start = time.process_time()
      records.decode_batch(info, payloads, imu_location=one, use_protobuf=use_protobuf)
      times.append(time.process_time() - start)
    out[f"{name}_examples_per_cpu_s"] = round(len(payloads) / float(np.median(times)), 1)
  out["record_bytes"] = int(np.mean([len(p) for p in payloads]))
  return out


def main(argv):
  del argv
  console.setup()
  print(json.dumps(measure_decode_only()), flush=True)
  num_records = records.DatasetInfo.load(FLAGS.data_dir).splits[FLAGS.split].num_examples
  for n in FLAGS.num_workers:
    for cache in FLAGS.cache_in_memory:
      for crc in FLAGS.crc_check:
        print(json.dumps(measure(int(n), crc, cache.lower() in ("1", "true", "yes"),
                                 num_records)), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
