r"""Downstream HAR evaluation: macro F1 with few labels, from scratch vs pretrained.

  python -m mujo_jax.main --config=configs/finetune.py:utd_mhad --workdir=OUT \
      [--config.pretrained=PRETRAIN_WORKDIR] [--config.fractions='(0.02, 1.0)'] \
      [--config.modes='("scratch", "linear", "finetune", "zero_shot")'] \
      [--config.seeds='(0, 1, 2)'] [--config.data.path=DIR_OR_FILE] \
      [--config.data.options.<adapter argument>=VALUE]

The argument after the colon is the dataset: utd_mhad, mmfit, motionsense, mhealth, myogym or
npz (the generic format: --config.data.path=file.npz). Without --config.pretrained only the
from-scratch baseline runs, with the architecture of `model` below (the demo model's IMU
tower); with it, the pretrained workdir's own model config is used for every mode.
Outputs in OUT: results.json, results.md, confusion.png, f1_vs_fraction.png
(mujo_jax/downstream/report.py).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from configs import pretrain

# Default data locations; UTD-MHAD is the one this project ships beside the checkout.
DATA_PATHS = {
    "utd_mhad": "../shared/data/utd_mhad",
    "mmfit": "data/mm-fit",
    "motionsense": "data/motionsense",
    "mhealth": "data/MHEALTHDATASET",
    "myogym": "data/myogym",
    "npz": "data/dataset.npz",
}

# Each adapter's keyword arguments (see its `load` docstring) and their types; unset (None)
# keeps the adapter's default, e.g. --config.data.options.sensor=wrist for utd_mhad.
ADAPTER_OPTIONS = {
    "utd_mhad": dict(sensor=str, subjects=tuple, sensor_frame=str),
    "mmfit": dict(device=str, test_split=str, workouts=tuple, labels_dir=str, skip_missing=bool,
                  gyr_unit=str, max_gap_s=float),
    "motionsense": dict(activities=tuple, accelerometer=str),
    "mhealth": dict(sensor=str),
    "myogym": dict(drop_repeated_imu=bool, max_gap_s=float),
    "npz": dict(),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, lazy=True)
  names = [k for k in arg if k in DATA_PATHS]
  if len(names) != 1:
    raise ValueError(f"configs/finetune.py:<dataset> with one of {sorted(DATA_PATHS)}, got {arg!r}")
  dataset = names[0]
  config = ml_collections.ConfigDict()
  config.mode = "finetune"
  config.dataset = dataset
  config.seed = 0
  config.pretrained = ""             # a pretraining workdir; empty: scratch only
  config.modes = ("scratch", "linear", "finetune", "zero_shot")
  config.fractions = (0.02, 1.0)
  config.seeds = (0, 1, 2)
  config.zero_shot_template = "a person doing {}"

  config.data = ml_collections.ConfigDict()
  config.data.path = DATA_PATHS[dataset]
  config.data.options = ml_collections.ConfigDict(
      {k: config_dict.placeholder(kind) for k, kind in ADAPTER_OPTIONS[dataset].items()})
  config.data.window = ml_collections.ConfigDict(dict(
      rate_hz=50.0, window_s=5.0, stride_s=2.5, per_recording="all", short="drop",
      labels="drop", missing_gyro="error"))
  config.data.split_seed = 0         # seeded subject split where a dataset has no official one
  config.data.val_fraction = 0.15
  config.data.test_fraction = 0.3

  # The from-scratch architecture when no pretrained workdir is given: the demo model's.
  config.model = pretrain.get_config("demo").model
  config.compute_dtype = "auto"

  config.train = ml_collections.ConfigDict(dict(
      batch_size=32, steps=600, learning_rate=1e-3, warmup_steps=30, weight_decay=1e-4,
      encoder_lr_factor=1.0, eval_every=30, patience=6))
  config.linear = ml_collections.ConfigDict(dict(c_grid=(0.01, 0.1, 1.0, 10.0, 100.0),
                                                 max_iter=2000))
  config.eval_batch_size = 256

  if dataset == "utd_mhad":
    # Trials are single gestures of 2-6.5 s: one centred 5 s window each, padded at rest.
    config.data.window.per_recording = "center"
    config.data.window.short = "pad_at_rest"
  return config
