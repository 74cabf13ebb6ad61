r"""Per-device memory of the compiled training step, by global batch and loss chunk.

  python -m mujo_jax.bench_memory --config=configs/pretrain.py --cpu_devices=8 \
      --batch=4096,65536 --chunk_size=0,1024

Compiles (ahead of time, never runs) the real step for every (batch, chunk_size)
and prints XLA's buffer assignment per device (`compiled.memory_analysis()`):
temp (activations, logits, gradients in flight), arguments (state + batch),
outputs, aliased (donated state reused for the new state) and generated code;
one JSON line per setting, then a table. `--cpu_devices=N` simulates N CPU
devices, so a pod slice's per-device numbers can be read on a laptop (the CPU
compiler's fusion and layouts differ from TPU/GPU, so treat them as estimates).
"""

import json
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from mujo_jax import console
from mujo_jax import contrastive
from mujo_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
flags.DEFINE_list("batch", None, "Global batch sizes (default: the config's).")
flags.DEFINE_list("chunk_size", None, "loss.chunk_size values (default: the config's; 0 = off).")
flags.DEFINE_integer("cpu_devices", None, "Simulate this many CPU devices (CPU backend only).")
flags.mark_flags_as_required(["config"])

FIELDS = ("temp", "argument", "output", "alias", "generated_code")


def step_memory(config, batch_size: int) -> dict:
  """Compiles the step of `config` at `batch_size`; its per-device bytes by kind."""
  config.batch_size = batch_size
  trainer = train.Trainer(config, workdir=None)
  pairs = contrastive.pairs_for_step(config.loss.strategy, trainer.modalities, 0, config.seed)
  start = time.perf_counter()
  analysis = trainer.compiled_step(pairs).memory_analysis()
  result = {"batch": batch_size, "chunk_size": int(config.loss.chunk_size),
            "devices": trainer.mesh.size, "mesh": dict(trainer.mesh.shape),
            "compile_s": round(time.perf_counter() - start, 1)}
  result.update({f"{kind}_bytes": int(getattr(analysis, f"{kind}_size_in_bytes"))
                 for kind in FIELDS})
  return result


def table(rows) -> str:
  header = ["batch", "chunk"] + [f"{k} MiB" for k in FIELDS] + ["compile s"]
  lines = [" | ".join(header), " | ".join("---" for _ in header)]
  for r in rows:
    lines.append(" | ".join([str(r["batch"]), str(r["chunk_size"])]
                            + [f"{r[f'{k}_bytes'] / 2**20:.1f}" for k in FIELDS]
                            + [str(r["compile_s"])]))
  return "\n".join(lines)


def main(argv):
  del argv
  console.setup()
  if FLAGS.cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  config = FLAGS.config
  batches = [int(b) for b in FLAGS.batch or [config.batch_size]]
  chunks = [int(c) for c in FLAGS.chunk_size or [config.loss.chunk_size]]
  rows = []
  for batch_size in batches:
    for chunk in chunks:
      config.loss.chunk_size = chunk
      rows.append(step_memory(config, batch_size))
      print(json.dumps(rows[-1]), flush=True)
  print(f"per-device bytes of the compiled step ({jax.default_backend()}, "
        f"{jax.device_count()} devices, {jax.devices()[0].device_kind}):\n{table(rows)}",
        flush=True)


if __name__ == "__main__":
  app.run(main)
