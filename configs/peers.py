r"""Peers on UTD-MHAD under CMC-CMKM's protocol (Brinzea et al. 2022): one table row per method.

  python -m mujo_jax.main --config=configs/peers.py:method=cmc_cmkm --workdir=DIR
  python -m mujo_jax.main --config=configs/peers.py:method=supervised_mm,semi --workdir=DIR

Needs the 50-step trials (each whole trial, both modalities, resampled to 50 steps):
  python -m data_prep.convert_utd_mhad --utd_mhad_dir=../shared/data/utd_mhad \
      --out_dir=data/utd_mhad_trials --trial_steps=50 --simulated_locations=false

Arguments after the colon (comma-separated):
  method=M   supervised_imu | supervised_mm | simclr_imu | cmc | cmc_cmkm | mujo | mujo_cnn
  semi       score the label fractions 1%, 5%, 10%, 100% (stratified per class) instead of 100%
  epochs=N   epochs of every stage (default 100, the paper's)
  seeds=N    number of seeds (default 3)
  finetune   also fine-tune the pretrained encoders with the fusion head (finetune_mm; simclr_imu
             always fine-tunes: finetune_imu)
A method is a list of stages (config.stages, in config.stage_order), each one run of the trainer
(mujo_jax/peer_train.py) in DIR/<stage>/seed_<s>; a stage names earlier stages of the same seed in
`init_from` (its encoders start from that stage's) and `loss.mining_from` (CMKM's frozen SimCLR
encoders). The stages in config.evaluations are supervised runs scored once on the test subjects
(2, 4, 6, 8) with their best validation checkpoint; config.paper holds the paper's accuracy for
each, printed beside ours in DIR/results.md.
"""

import ml_collections

from configs import common
from mujo_jax import augment
from mujo_jax import peer_model

METHODS = ("supervised_imu", "supervised_mm", "simclr_imu", "cmc", "cmc_cmkm", "mujo", "mujo_cnn")
CMKM_IMU_AUGMENTATIONS = ("jitter", "scaling", "permutation", "channel_shuffle")
CMKM_POSE_AUGMENTATIONS = ("jitter", "crop_and_resize", "scaling", "rotation", "shear")
# Test accuracy (%) on UTD-MHAD reported by Brinzea et al. 2022, per evaluation stage.
PAPER = {
    ("supervised_imu", "supervised"): 76.74,
    ("supervised_mm", "supervised"): 97.21,
    ("simclr_imu", "linear_imu"): 72.09,
    ("cmc", "linear_mm"): 96.04,
    ("cmc_cmkm", "linear_mm"): 97.67,
}
DESCRIPTIONS = {
    "supervised": "trained end to end with labels",
    "linear_imu": "frozen inertial encoder + linear classifier",
    "linear_mm": "frozen encoders + Linear(256)+BN+ReLU per modality, concatenated, linear",
    "finetune_imu": "inertial encoder fine-tuned with a linear classifier",
    "finetune_mm": "encoders fine-tuned with the fusion head",
}


def stage(objective: str, modalities=("imu", "pose"), *, encoders=None, epochs: int = 100,
          **fields) -> ml_collections.ConfigDict:
  """One trainer run: the peer model and objective; Adam at 1e-3, batch 64 as in the paper."""
  config = ml_collections.ConfigDict()
  config.mode = "peer_stage"
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      dir="data/utd_mhad_trials", train_split="train", val_split="val", test_split="test",
      imu_locations="random", crc_check="first_pass", label_fraction=1.0, modality_dropout=0.0,
      num_workers=0, skip_corrupt=False, max_corrupt_fraction=0.0, cache_in_memory=False,
      remote_block_mb=8, remote_cache_mb=256, device_prefetch=2))
  config.model = peer_model.default_config()
  config.model.modalities = tuple(modalities)
  config.model.encoders = {m: (encoders or {}).get(m, peer_model.default_config().encoders[m])
                           for m in modalities}
  config.model.classifier_modalities = tuple(modalities)
  config.model.classifier_head = "fusion" if len(modalities) > 1 else "linear"
  config.loss = ml_collections.ConfigDict(dict(
      objective=objective, strategy="all_pairs", temperature=0.1, modality="",
      mining_from=ml_collections.ConfigDict({m: "" for m in modalities}), cmkm_k=1,
      intra_negative_weight=1.0, intra_temperature=1.0, chunk_size=0))
  config.augment = ml_collections.ConfigDict(dict(
      probability=0.75, imu=(), pose=(), params=ml_collections.ConfigDict({"pose": {}})))
  if objective != "supervised":
    config.augment.imu = CMKM_IMU_AUGMENTATIONS
    config.augment.pose = CMKM_POSE_AUGMENTATIONS
  # The reference's supervised and evaluation runs (Lightning): the learning rate halves when
  # validation accuracy has not improved for `patience` epochs (ReduceLROnPlateau, mode max;
  # 5 for its multimodal classifier, 10 for its single-modality ones) and training stops when
  # the validation loss has not improved for 50 epochs. Self-supervised stages have neither.
  supervised = objective == "supervised"
  config.plateau = ml_collections.ConfigDict(dict(
      factor=0.5, threshold=1e-4, patience=(5 if len(modalities) > 1 else 10) if supervised else 0))
  config.early_stopping_patience = 50 if supervised else 0
  config.freeze = ()
  config.init_from = ""            # a stage name (resolved per seed) or a workdir
  config.init_modalities = ()
  config.epochs = epochs
  config.batch_size = 64
  config.total_steps = 0            # set from epochs and the split size when the stage runs
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=0, end_learning_rate_factor=1.0, weight_decay=0.0,
      b1=0.9, b2=0.999, grad_clip_norm=1e9, max_consecutive_nonfinite=10,
      no_decay_regex=r".*(bias|scale|embedding|pos_embedding|cls|log_logit_scale).*"))
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  config.param_sharding_rules = ((r".*", ()),)
  config.compute_dtype = "float32"
  config.rng_impl = "rbg"           # of dropout and augmentation draws (peer_train)
  config.compilation_cache_dir = ""
  config.profile_steps = None
  config.log_every = 100
  config.eval_every = 0             # supervised stages: every epoch (set when the stage runs)
  config.eval_batch_size = 128
  config.checkpoint_every = 0       # the end of the stage
  config.keep_checkpoints = 1
  config.update(fields)
  return config


def evaluation(kind: str, modalities, source: str = "", **fields) -> ml_collections.ConfigDict:
  """A supervised stage that scores encoders: kind is one of DESCRIPTIONS."""
  config = stage("supervised", modalities, **fields)
  if source:
    config.init_from = source
    config.init_modalities = tuple(modalities)
  if kind.startswith("linear"):
    config.freeze = tuple(modalities)
  return config


def get_config(arg=None):
  arg = common.parse_arg(arg, method="cmc_cmkm", semi=False, epochs=100, seeds=3, finetune=False)
  method = arg["method"]
  if method not in METHODS:
    raise ValueError(f"configs/peers.py:method={method!r}; known: {METHODS}")
  epochs = int(arg["epochs"])
  config = ml_collections.ConfigDict()
  config.mode = "peers"
  config.method = method
  config.data = ml_collections.ConfigDict(dict(dir="data/utd_mhad_trials"))
  config.seeds = tuple(range(int(arg["seeds"])))
  config.fractions = (0.01, 0.05, 0.1, 1.0) if arg["semi"] else (1.0,)
  config.compilation_cache_dir = ""  # empty: WORKDIR/xla_cache, shared by the stages
  stages = {}
  mm, imu = ("imu", "pose"), ("imu",)
  if method == "supervised_imu":
    stages["supervised"] = evaluation("supervised", imu)
  elif method == "supervised_mm":
    # The reference's multimodal supervised run: its skeleton training transforms (crop,
    # jitter, rotation; augment.POSE_SUPERVISED_*), and its inertial encoder at the
    # CNNTransformer's default kernel size 3 (its config sets no kernel_size: 50 steps out).
    sup = evaluation("supervised", mm)
    sup.augment.update(dict(probability=1.0, pose=augment.POSE_SUPERVISED_AUGMENTATIONS))
    sup.augment.params.pose = dict(augment.POSE_SUPERVISED_PARAMS)
    sup.model.encoder_kwargs.imu = {"kernel_size": 3}
    stages["supervised"] = sup
  elif method == "simclr_imu":
    stages["simclr_imu"] = stage("simclr", imu, loss=dict(modality="imu"))
    stages["linear_imu"] = evaluation("linear_imu", imu, "simclr_imu")
    stages["finetune_imu"] = evaluation("finetune_imu", imu, "simclr_imu")
  else:
    encoders = {"imu": "transformer", "pose": "transformer"} if method == "mujo" else None
    objective = {"cmc": "cmc", "cmc_cmkm": "cmkm"}.get(method, "mujo")
    if method == "cmc_cmkm":
      stages["simclr_imu"] = stage("simclr", imu, loss=dict(modality="imu"))
      stages["simclr_pose"] = stage("simclr", ("pose",), loss=dict(modality="pose"))
    pretrain = stage(objective, mm, encoders=encoders)
    if method == "cmc_cmkm":
      pretrain.loss.mining_from = {"imu": "simclr_imu", "pose": "simclr_pose"}
    if method == "mujo":
      # MuJo's transformer towers at the demo's size, 10 tokens of 5 steps each; they end in
      # their own projection to the joint space.
      pretrain.model.update(dict(width=128, depth=2, num_heads=4, mlp_dim=512, embed_dim=128,
                                 projection=()))
    stages["pretrain"] = pretrain
    evaluations = [("linear_mm", mm), ("linear_imu", imu)]
    if arg["finetune"]:
      evaluations.append(("finetune_mm", mm))
    for kind, modalities in evaluations:
      ev = evaluation(kind, modalities, "pretrain")
      ev.model = ml_collections.ConfigDict(pretrain.model.to_dict())
      ev.model.modalities = modalities
      ev.model.encoders = {m: pretrain.model.encoders[m] for m in modalities}
      ev.model.classifier_modalities = modalities
      ev.model.classifier_head = "fusion" if kind.endswith("mm") else "linear"
      stages[kind] = ev
  for s in stages.values():
    s.epochs = epochs
  config.stages = ml_collections.ConfigDict(stages)
  config.stage_order = tuple(stages)
  config.evaluations = tuple(k for k, s in stages.items() if s.loss.objective == "supervised")
  config.paper = ml_collections.ConfigDict(
      {k: PAPER.get((method, k), 0.0) for k in config.evaluations})
  config.descriptions = ml_collections.ConfigDict(
      {k: DESCRIPTIONS[k] for k in config.evaluations})
  return config
