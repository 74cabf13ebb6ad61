r"""Entry point: `python -m mujo_jax.main --config=configs/pretrain.py:demo --workdir=DIR`.

Also runs the downstream evaluation (`--config=configs/finetune.py:<dataset>`).

The config decides what runs (`config.mode`). Re-running the same command with
the same workdir resumes from its last checkpoint. Workdir and data may be local
paths or gs:// URIs (mujo_jax/storage.py).

Before anything is written, mujo_jax/preflight.py checks the command line (a
misspelled --config.field names the nearest real ones), the workdir (checkpoints
of another model are refused, and its config.json kept) and the dataset.

Several processes (one per TPU VM host or GPU node) run the same command with
--jax_distributed: JAX detects TPU VMs and SLURM itself; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mujo_jax import console
from mujo_jax import preflight
from mujo_jax import storage

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:demo.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events go here.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() first (multi-host TPU/GPU; see tpu/). "
                  "Auto-detects TPU VMs and SLURM; the three flags below override.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator (with --jax_distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --jax_distributed).")
flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def _build_demo(data_dir: str) -> None:
  """The embedded demo dataset, written into data_dir (config.data.build_demo_if_missing)."""
  from data_prep import make_demo  # pylint: disable=import-outside-toplevel
  make_demo.build(data_dir, log=logging.info)


def main(argv):
  del argv
  console.setup()
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in explicit) and not FLAGS.jax_distributed:
    raise app.UsageError("--coordinator_address, --num_processes and --process_id need "
                         "--jax_distributed")
  if FLAGS.jax_distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  config = FLAGS.config
  workdir = storage.absolute(FLAGS.workdir)
  logging.info("process %d of %d; backend %s, %d device(s) (%d here): %s", jax.process_index(),
               jax.process_count(), jax.default_backend(), jax.device_count(),
               jax.local_device_count(), jax.devices()[0].device_kind)
  try:
    preflight.prepare_workdir(config, workdir, build_demo=_build_demo)
  except preflight.SetupError as e:
    sys.exit(f"FATAL: {e}")  # a setup mistake, not a bug: the message, no traceback
  if config.mode == "pretrain":
    from mujo_jax import train  # pylint: disable=import-outside-toplevel
    train.Trainer(config, workdir).train()
    logging.info("done; metrics in %s", storage.join(workdir, "metrics.jsonl"))
  elif config.mode == "peers":
    from mujo_jax import peers  # pylint: disable=import-outside-toplevel
    peers.run(config, workdir)
    logging.info("done; results in %s", storage.join(workdir, "results.md"))
  else:
    from mujo_jax.downstream import finetune  # pylint: disable=import-outside-toplevel
    finetune.Evaluator(config, workdir).run()
    logging.info("done; results in %s", storage.join(workdir, "results.md"))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a --config.field the config lacks gets one message naming
  the nearest real fields instead of ml_collections' KeyError traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    problems = preflight.misspelled_config_fields(argv)
    if not problems:
      raise
  sys.stderr.write("FATAL Flags parsing error:\n  " + "\n  ".join(problems) + "\n")
  sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
