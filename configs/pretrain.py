r"""MuJo pretraining: four towers (imu, pose, video, text) in one joint space.

  python -m mujo_jax.main --config=configs/pretrain.py --workdir=DIR        # base, FiMAD data
  python -m mujo_jax.main --config=configs/pretrain.py:demo --workdir=DIR   # laptop demo

Arguments after the colon (comma-separated, big_vision style):
  demo          small model on the embedded demo dataset (built on first use),
                sized to train on a laptop CPU
  utd_mhad      the demo-sized model on real UTD-MHAD skeleton + IMU + action text
                (no video), training subjects only; convert it first:
                  python -m data_prep.convert_utd_mhad \
                      --utd_mhad_dir=../shared/data/utd_mhad --out_dir=data/utd_mhad
  mix=A+B+...   the demo-sized model pretrained on a mixture of real and synthetic sources,
                label-free for UTD-MHAD evaluation (README, "Pretraining that transfers"):
                mocap (data/mocap32: Bandai Namco + HDM05 with templated text), demo
                (data/demo32), utd (data/utd_mhad_h36m: training subjects' IMU and pose, no
                text); with text from the movement itself (data_prep/motion_text.py, no
                label read): mocap-motion (data/mocap32_motion, convert_mocap
                --text=labels+motion) and utd-motion (data/utd_mhad_h36m_motion,
                convert_utd_mhad --text=motion); text tower the frozen pretrained
                all-MiniLM-L6-v2, text_len 32
  batch=N       global batch size
  steps=N       total training steps
  strategy=S    multitask strategy: all_pairs | random_pair | round_robin | imu_anchored
Any field can also be overridden with --config.some.field=value.
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from mujo_jax import model as model_lib


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, utd_mhad=False, mix="", batch=None, steps=None,
                         strategy="all_pairs")
  config = ml_collections.ConfigDict()
  config.name = ("demo" if arg["demo"] else "utd_mhad" if arg["utd_mhad"] else
                 f"mix_{arg['mix']}" if arg["mix"] else "base")
  config.mode = "pretrain"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.dir = "data/fimad"             # a local folder or gs://bucket/path
  config.data.build_demo_if_missing = False
  # Pretraining on several datasets (mujo_jax/mixture.py): ((dir, weight[, modalities]), ...),
  # each batch holding weight-proportional rows of each; modalities a source lacks or leaves
  # out are masked out of the loss. Empty: data.dir alone. Validation always reads data.dir.
  config.data.mixture = ()
  config.data.train_split = "train"
  config.data.val_split = "val"
  config.data.imu_locations = "random"       # one real location per example; or a tuple of names
  config.data.modality_dropout = 0.0
  # Makes simulated IMU look like a real wearable (mujo_jax/imu_augment.py; README,
  # "IMU augmentation"): all off by default.
  config.data.imu_augment = ml_collections.ConfigDict(dict(
      rotation="none",        # "none" | "small" (up to rotation_max_deg) | "uniform" (SO(3))
      rotation_max_deg=30.0,
      acc_noise_std=0.0,      # m/s^2, white Gaussian
      gyr_noise_std=0.0,      # rad/s
      acc_bias=0.0,           # m/s^2, constant per example and channel, U(-b, b)
      gyr_bias=0.0,           # rad/s
      gain=0.0,               # per-channel scale 1 + U(-g, g)
      rate_jitter=0.0,        # device clock factor U(1 - r, 1 + r)
  ))
  config.data.num_workers = 8
  # Skip records whose CRC or framing is wrong (each logged; counted per batch in
  # "skipped_corrupt") instead of stopping.
  config.data.skip_corrupt = False
  # With skip_corrupt: stop when more than this fraction of the records read is corrupt.
  config.data.max_corrupt_fraction = 0.01
  # Shards on gs:// are read in blocks (the read-ahead unit) into a block cache
  # per process and worker; a slice that fits the cache is fetched once.
  config.data.remote_block_mb = 8
  config.data.remote_cache_mb = 256
  # Record checksums: "always" (every read), "first_pass" (each record the first
  # time this process reads it), "off" (a flipped byte inside a record's payload
  # then goes unnoticed unless it breaks the record's framing). Index files and
  # dataset_info.json are checked by sha256 in every mode.
  config.data.crc_check = "always"
  # Keep this process's records in RAM after their first read (same order, same
  # resumable state); for slices that fit in memory.
  config.data.cache_in_memory = False
  # Batches copied to the devices ahead of the step that uses them.
  config.data.device_prefetch = 2

  config.model = model_lib.default_model_config()
  config.loss = ml_collections.ConfigDict()
  config.loss.strategy = arg["strategy"]
  # > 0: score each device's rows against the gathered columns in chunks of this
  # many columns (online log-sum-exp), so loss memory stops growing with n_local x N.
  config.loss.chunk_size = 0

  config.batch_size = 4096
  config.total_steps = 5000
  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 500
  config.optim.end_learning_rate_factor = 0.01
  config.optim.weight_decay = 0.05
  config.optim.b1 = 0.9
  config.optim.b2 = 0.98
  # Clips spikes only: about twice the typical global gradient norm (README,
  # "Configs and outputs"), so ordinary steps are not clipped.
  config.optim.grad_clip_norm = 20.0
  # A step whose loss or gradients are not finite is skipped (no update); this
  # many in a row stop the run with an error.
  config.optim.max_consecutive_nonfinite = 10
  # Parameters matching this regex get no weight decay.
  config.optim.no_decay_regex = r".*(bias|scale|embedding|pos_embedding|cls|log_logit_scale).*"

  # Mesh: the batch is split over data x fsdp (every device); parameters and
  # optimizer state are split over `fsdp` by the rules below (FSDP: each device
  # holds 1/fsdp of the kernels, gathered inside the step). `data: -1` takes the
  # devices that fsdp leaves, e.g. --config.mesh.fsdp=4 on 8 devices -> data=2.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  # (regex over "/"-joined state paths, spec); first match wins. A spec is a
  # PartitionSpec as a tuple (each sharded dimension must divide), or a mesh axis
  # name: the leaf's largest dimension that divides by that axis is split over it
  # (replicated if none does). Kernels and the token embedding hold ~all bytes;
  # biases, norms, position embeddings and scalars stay replicated.
  config.param_sharding_rules = (
      (r".*/(kernel|embedding)", "fsdp"),
      (r".*", ()),
  )
  config.compute_dtype = "auto"   # bfloat16 on GPU/TPU, float32 on CPU

  # Persistent XLA compilation cache (a local path or gs://); None: off.
  config.compilation_cache_dir = config_dict.placeholder(str)
  # (first, last) step of a profiler trace written into WORKDIR/profile; None: off.
  config.profile_steps = config_dict.placeholder(tuple)

  config.log_every = 50
  config.eval_every = 1000
  config.eval_batch_size = 1024
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3

  if arg["demo"] or arg["utd_mhad"] or arg["mix"]:
    config.data.dir = "data/demo"
    config.data.build_demo_if_missing = True
    config.data.num_workers = 1
    config.data.modality_dropout = 0.0
    config.model.width = 128
    config.model.depth = 2
    config.model.num_heads = 4
    config.model.mlp_dim = 512
    config.model.embed_dim = 128
    config.batch_size = 128
    config.total_steps = 300
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 30
    config.optim.weight_decay = 0.01
    config.log_every = 20
    config.eval_every = 150
    config.eval_batch_size = 256
    config.checkpoint_every = 150
  if arg["utd_mhad"]:
    # 323 training trials (subjects 1, 3, 5; val: 7): small batches, many epochs.
    config.data.dir = "data/utd_mhad"
    config.data.build_demo_if_missing = False
    config.model.modalities = ("imu", "pose", "text")
    config.model.num_joints = 20                  # Kinect v1 skeleton
    config.batch_size = 64
    config.total_steps = 1500
    config.optim.warmup_steps = 100
    config.log_every = 50
    config.eval_every = 500
    config.eval_batch_size = 128
    config.checkpoint_every = 500
  if arg["mix"]:
    _mixture(config, arg["mix"])
  if arg["batch"]:
    config.batch_size = int(arg["batch"])
  if arg["steps"]:
    config.total_steps = int(arg["steps"])
  return config


# Sources of `:mix=`: (dir, modalities). UTD-MHAD's training subjects only (the mixture reads
# the "train" split: subjects 1, 3, 5), without its action text, which names the class.
MIX_SOURCES = {
    "mocap": ("data/mocap32", ("imu", "pose", "text")),
    "demo": ("data/demo32", ("imu", "pose", "text")),
    "utd": ("data/utd_mhad_h36m", ("imu", "pose")),
    # Text from the movement itself (data_prep/motion_text.py), never from a label:
    # mocap windows alternate label templates and movement captions (convert_mocap
    # --text=labels+motion); UTD-MHAD's training subjects get movement captions only
    # (convert_utd_mhad --text=motion), not their action text.
    "mocap-motion": ("data/mocap32_motion", ("imu", "pose", "text")),
    "utd-motion": ("data/utd_mhad_h36m_motion", ("imu", "pose", "text")),
}


def _mixture(config, mix: str):
  names = mix.split("+")
  unknown = sorted(set(names) - set(MIX_SOURCES))
  if unknown:
    raise ValueError(f"mix={mix}: unknown sources {unknown}; known: {sorted(MIX_SOURCES)}")
  config.data.mixture = tuple((MIX_SOURCES[n][0], 1.0, MIX_SOURCES[n][1]) for n in names)
  # Validation (retrieval, zero-shot) on the first source with text.
  config.data.dir = next(MIX_SOURCES[n][0] for n in names if "text" in MIX_SOURCES[n][1])
  config.data.build_demo_if_missing = False
  # Real wearables: a sensor turned on its strap by up to 30 degrees, a little noise, bias,
  # gain and clock drift. Not "uniform" (full rotation invariance, as UniMTS): that also
  # hides the directions that tell UTD-MHAD's gestures apart (README, "Pretraining that
  # transfers").
  config.data.imu_augment.update(dict(
      rotation="small", rotation_max_deg=30.0, acc_noise_std=0.05, gyr_noise_std=0.01,
      acc_bias=0.2, gyr_bias=0.02, gain=0.05, rate_jitter=0.05))
  # The IMU tower learns the locations UTD-MHAD's sensors are worn at (README, "Pretraining
  # that transfers"): known from the device's placement, not from labels.
  # --config.data.imu_locations=random trains on all 16.
  config.data.imu_locations = "right_wrist,right_thigh"
  config.model.modalities = ("imu", "pose", "text")
  config.model.text_len = 32
  config.model.towers.text.architecture = "minilm"
  config.model.frozen_towers = ("text",)
  config.batch_size = 64
  config.total_steps = 1000
  config.optim.warmup_steps = 100
  config.log_every = 50
  config.eval_every = 500
  config.eval_batch_size = 128
  config.checkpoint_every = 500
