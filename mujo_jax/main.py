r"""Entry point: `python -m mujo_jax.main --config=configs/pretrain.py:demo --workdir=DIR`.

Also runs the downstream evaluation (`--config=configs/finetune.py:<dataset>`).

The config decides what runs (`config.mode`). Re-running the same command with
the same workdir resumes from its last checkpoint. Workdir and data may be local
paths or gs:// URIs (mujo_jax/storage.py).

Several processes (one per TPU VM host or GPU node) run the same command with
--jax_distributed: JAX detects TPU VMs and SLURM itself; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

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


def ensure_data(config) -> None:
  """Builds the embedded demo dataset on first use, when the config asks for it."""
  from mujo_jax import records  # pylint: disable=import-outside-toplevel
  if storage.exists(storage.join(config.data.dir, records.INFO_FILENAME)):
    return
  if not config.data.get("build_demo_if_missing", False):
    records.DatasetInfo.load(config.data.dir)  # raises with instructions
  logging.info("no dataset at %s yet: building the demo dataset there first (about a minute)",
               config.data.dir)
  from data_prep import make_demo  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    make_demo.build(config.data.dir, log=logging.info)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("demo data built")


class _QuietLibraries(std_logging.Filter):
  """Keeps our INFO lines; libraries (Orbax logs every save step) only from WARNING."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/mujo_jax/" in record.pathname \
        or "/data_prep/" in record.pathname


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in explicit) and not FLAGS.jax_distributed:
    raise app.UsageError("--coordinator_address, --num_processes and --process_id need "
                         "--jax_distributed")
  if FLAGS.jax_distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  config = FLAGS.config
  workdir = storage.absolute(FLAGS.workdir)
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  logging.info("process %d of %d; backend %s, %d device(s) (%d here): %s", jax.process_index(),
               jax.process_count(), jax.default_backend(), jax.device_count(),
               jax.local_device_count(), jax.devices()[0].device_kind)
  if config.mode == "pretrain":
    from mujo_jax import train  # pylint: disable=import-outside-toplevel
    ensure_data(config)
    train.Trainer(config, workdir).train()
  elif config.mode == "finetune":
    from mujo_jax.downstream import finetune  # pylint: disable=import-outside-toplevel
    finetune.Evaluator(config, workdir).run()
    logging.info("done; results in %s", storage.join(workdir, "results.md"))
    return
  else:
    raise ValueError(f"unknown config.mode {config.mode!r}; known: 'pretrain', 'finetune'")
  logging.info("done; metrics in %s", storage.join(workdir, "metrics.jsonl"))


if __name__ == "__main__":
  app.run(main)
