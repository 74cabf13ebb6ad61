r"""Speed of the real training step on synthetic device-resident inputs; one JSON line.

  python -m mujo_jax.bench --config=configs/pretrain.py --batch=4096

Times `--steps` steps after `--warmup` (each step blocked on), reports the median
step time, examples/s, analytic TFLOP/s (3 x forward FLOPs of the towers the
step runs, see model.analytic_flops), MFU against the chip's dense bf16 peak
where the device is in PEAK_BF16_TFLOPS, peak device memory where the backend
reports it, and the compiler's own memory estimate.
"""

import json
import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from mujo_jax import console
from mujo_jax import contrastive
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax import model as model_lib
from mujo_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.mark_flags_as_required(["config"])

# Dense bf16 peak TFLOP/s per chip (vendor datasheets), matched against jax's device_kind;
# more specific names first ("TPU v5 lite" is v5e, "TPU v5" alone is v5p).
PEAK_BF16_TFLOPS = (
    ("TPU v6 lite", 918.0), ("TPU v6e", 918.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0),
    ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v4", 275.0),
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
)


def peak_bf16_tflops(device_kind: str) -> float | None:
  """The chip's dense bf16 peak, or None for devices not in the table (CPUs, others)."""
  for name, peak in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def synthetic_batch(config, batch_size: int, sharding) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  host = model_lib.dummy_batch(config.model, batch_size)
  for key in ("imu", "pose", "video"):
    host[key] = rng.normal(size=host[key].shape).astype(host[key].dtype)
  text = INPUT_KEYS["text"]
  host[text] = rng.integers(1, config.model.vocab_size, host[text].shape, dtype=np.int32)
  host["text_len"] = rng.integers(8, config.model.text_len + 1, batch_size, dtype=np.int32)
  return {k: jax.device_put(v, sharding) for k, v in host.items()}


def main(argv):
  del argv
  console.setup()
  config = FLAGS.config
  if FLAGS.batch:
    config.batch_size = FLAGS.batch
  trainer = train.Trainer(config, workdir=None)
  pairs = contrastive.pairs_for_step(config.loss.strategy, trainer.modalities, 0, config.seed)
  start = time.perf_counter()
  step_fn = trainer.compiled_step(pairs)
  compile_s = time.perf_counter() - start
  state = trainer.init_state()
  batch = synthetic_batch(config, config.batch_size, trainer.batch_sharding)
  for _ in range(FLAGS.warmup):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  used = {m for p in pairs for m in p}
  flops = model_lib.analytic_flops(trainer.model_config)
  forward = sum(v for k, v in flops.items() if k in used)
  device = jax.devices()[0]
  tflops_per_s = 3 * forward * config.batch_size / step_s / 1e12
  peak = peak_bf16_tflops(device.device_kind)
  stats = device.memory_stats() or {}
  analysis = step_fn.memory_analysis()
  result = {
      "config": config.get("name", ""), "batch": config.batch_size, "pairs": len(pairs),
      "examples_per_s": round(config.batch_size / step_s, 1),
      "step_ms_median": round(step_s * 1e3, 2),
      "step_ms_min_max": [round(min(times) * 1e3, 2), round(max(times) * 1e3, 2)],
      "tflops_per_s": round(tflops_per_s, 2),
      # Model FLOPs utilisation: analytic FLOP/s over the peak of all chips of the run.
      "mfu": (round(tflops_per_s / (peak * jax.device_count()), 4) if peak else None),
      "peak_bf16_tflops_per_chip": peak,
      "gflops_per_example_fwd": round(forward / 1e9, 3),
      "peak_memory_gib": (round(stats["peak_bytes_in_use"] / 2**30, 2)
                          if "peak_bytes_in_use" in stats else None),
      # CPU devices report no memory stats; the process's peak RSS bounds it there.
      "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      "compiled_temp_gib": (round(analysis.temp_size_in_bytes / 2**30, 3)
                            if analysis is not None else None),
      "compile_s": round(compile_s, 1), "compute_dtype": trainer.model_config.dtype,
      "backend": jax.default_backend(), "device_kind": device.device_kind,
      "devices": jax.device_count(), "final_loss": float(metrics["loss"]),
  }
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
