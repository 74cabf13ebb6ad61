r"""Entry point: `python -m mujo_jax.main --config=configs/pretrain.py:demo --workdir=DIR`.

Also runs the downstream evaluation (`--config=configs/finetune.py:<dataset>`).

The config decides what runs (`config.mode`). Re-running the same command with
the same workdir resumes from its last checkpoint.
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:demo.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events go here.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() first (multi-host TPU/GPU; see tpu/).")
flags.mark_flags_as_required(["config", "workdir"])


def ensure_data(config) -> None:
  """Builds the embedded demo dataset on first use, when the config asks for it."""
  from mujo_jax import records  # pylint: disable=import-outside-toplevel
  if os.path.exists(os.path.join(config.data.dir, records.INFO_FILENAME)):
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
  if FLAGS.jax_distributed:
    jax.distributed.initialize()
  config = FLAGS.config
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("backend %s, %d device(s): %s", jax.default_backend(), jax.device_count(),
               jax.devices()[0].device_kind)
  if config.mode == "pretrain":
    from mujo_jax import train  # pylint: disable=import-outside-toplevel
    ensure_data(config)
    train.Trainer(config, FLAGS.workdir).train()
  elif config.mode == "finetune":
    from mujo_jax.downstream import finetune  # pylint: disable=import-outside-toplevel
    finetune.Evaluator(config, FLAGS.workdir).run()
    logging.info("done; results in %s", os.path.join(FLAGS.workdir, "results.md"))
    return
  else:
    raise ValueError(f"unknown config.mode {config.mode!r}; known: 'pretrain', 'finetune'")
  logging.info("done; metrics in %s", os.path.join(FLAGS.workdir, "metrics.jsonl"))


if __name__ == "__main__":
  app.run(main)
