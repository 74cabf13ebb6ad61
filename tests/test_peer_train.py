"""The peer protocol on the trainer: objectives on a mesh, frozen and initialised encoders,
label fractions, and one whole table row (stages, resume, results) on a tiny dataset."""

import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import peers as peers_config
from data_prep.dataset_writer import DatasetWriter
from mujo_jax import input_pipeline
from mujo_jax import peer_train
from mujo_jax import peers
from mujo_jax import preflight
from mujo_jax import records
from tests.conftest import tiny_example
from tests.conftest import tiny_info

CLASSES = ("a", "b", "c")
# Small CMC-CMKM encoders and projection head: the same modules and code paths as the paper's
# sizes at a fraction of their step time and memory. Every stage of one run must build them
# alike: init_from and CMKM's mining load encoders from earlier stages' checkpoints. The skeleton
# encoder keeps 32 channels after conv2: they become the height of its co-occurrence images,
# which conv3 to conv6 and their pools shrink to 1.
SMALL_ENCODERS = {"imu": {"num_layers": 1, "mlp_dim": 64, "out_channels": (8, 16, 32)},
                  "pose": {"out_channels": (8, 32, 8, 8, 16, 32)}}
SMALL_PROJECTION = (32, 16)


def small_model(config):
  """Sets config.model (of one stage) to the small encoders and projection head."""
  config.model.encoder_kwargs = SMALL_ENCODERS
  config.model.projection = SMALL_PROJECTION
  return config


def write_trials(out_dir, per_split=(24, 8, 8), seed=0):
  """train/val/test of 50-step trials, 20 joints, one real IMU location; label = clip % 3."""
  info = tiny_info(name="tiny_trials", imu_locations=("right_wrist",), trial_steps=50,
                   joint_names=tuple(f"j{i}" for i in range(20)), class_names=CLASSES)
  rng = np.random.default_rng(seed)
  writer = DatasetWriter(str(out_dir), info, records_per_shard=16)
  first = 0
  for split, n in zip(("train", "val", "test"), per_split):
    examples = []
    for c in range(first, first + n):
      ex = tiny_example(info, rng, c, 0)
      ex["imu_location_mask"] = np.ones(1, np.int64)
      # A class signal the classifier can find: a per-class offset on every channel.
      ex["imu"] = (ex["imu"] + 2.0 * (c % 3)).astype(np.float16)
      examples.append(ex)
    writer.write_split(split, examples)
    first += n
  return writer.finish()


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
  """This module's programs compiled without XLA's backend (LLVM) optimisations: these tests
  spend their time compiling steps they run once or twice, not running them. What they compare
  is compiled alike on both sides; the setting is restored for the modules after this one."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
  out = tmp_path_factory.mktemp("trials")
  write_trials(out)
  return str(out)


def stage_config(objective, data_dir, modalities=("imu", "pose"), **fields):
  c = peers_config.stage(objective, modalities, **fields)
  c.data.dir = data_dir
  c.batch_size = 16
  c.total_steps = 2
  c.checkpoint_every = 2
  c.eval_batch_size = 8
  c.rng_impl = "threefry2x32"   # partitionable: the same draws whatever the mesh
  if objective == "supervised":
    c.model.num_classes = len(CLASSES)
  return small_model(c)


def batch_of(config, n=16):
  arrays = peer_train.load_split(config, "train")
  return {k: v[:n] for k, v in arrays.items()}


def trained(config, workdir):
  preflight.prepare_workdir(config, workdir)
  peer_train.PeerTrainer(config, workdir).train()
  return workdir


@pytest.fixture(scope="module")
def simclr_dirs(trials, tmp_path_factory):
  """SimCLR runs of each modality: CMKM's mining encoders."""
  root = tmp_path_factory.mktemp("simclr")
  return {m: trained(stage_config("simclr", trials, (m,), loss=dict(modality=m)),
                     str(root / m)) for m in ("imu", "pose")}


class _SgdTrainer(peer_train.PeerTrainer):
  """Plain SGD at rate 1: the update is the gradient itself, so comparing updates compares
  gradients element by element (Adam's first step, g / |g|, would amplify rounding)."""

  def make_optimizer(self, config):
    schedule = optax.constant_schedule(1.0)
    return optax.sgd(schedule), schedule


def one_step(config, devices, batch):
  trainer = _SgdTrainer(config, None, devices=devices)
  state = trainer.init_state()
  before = jax.device_get(state)
  pairs = trainer.pairs_for_step(0)
  new, metrics = trainer.compiled_step(pairs)(   # donates `state`
      state, input_pipeline.to_global_batch(batch, trainer.mesh, trainer.data_axes))
  return before, jax.device_get(new), jax.device_get(metrics)


@pytest.mark.parametrize("objective", ["supervised", "simclr", "cmkm"])
def test_a_step_on_8_devices_equals_the_step_on_one(objective, trials, simclr_dirs):
  """The whole step (augmentation, BatchNorm over the global batch, the sharded loss with its
  mined positives, the update) is the same on a mesh of 8 as on one device. (cmc and mujo
  call contrastive.contrastive_loss, whose sharded == dense test is in test_contrastive.py,
  through the same augmentation and model path as cmkm.)"""
  fields = {"loss": {"modality": "imu"}} if objective == "simclr" else {}
  modalities = ("imu",) if objective == "simclr" else ("imu", "pose")
  config = stage_config(objective, trials, modalities, **fields)
  if objective == "cmkm":
    config.loss.mining_from = dict(simclr_dirs)
  batch = batch_of(config)
  before, one, m1 = one_step(config, jax.devices()[:1], batch)
  _, eight, m8 = one_step(config, jax.devices(), batch)
  assert np.isfinite(m1["loss"]) and m1["skipped"] == 0
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  grads_one = jax.tree.map(np.subtract, before.params, one.params)
  grads_eight = jax.tree.map(np.subtract, before.params, eight.params)
  largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_one))
  assert largest > 0  # the step trained something
  # Per leaf, to 0.2% of its largest entry: summation order differs between the layouts (and
  # BatchNorm divides by small batch deviations); a real sharding bug is off by ~100%.
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_eight),
                          jax.tree.leaves(grads_one)):
    scale = max(np.abs(b).max(), 1e-3 * largest)   # biases before a BatchNorm: ~0 gradients
    assert np.abs(a - b).max() <= 2e-3 * scale, jax.tree_util.keystr(path)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               eight.batch_stats, one.batch_stats)


def test_cmkm_refuses_mining_encoders_that_are_not_simclr_of_that_modality(trials, simclr_dirs):
  config = stage_config("cmkm", trials)
  config.loss.mining_from = {"imu": simclr_dirs["pose"], "pose": simclr_dirs["pose"]}
  with pytest.raises(ValueError, match=r"mining_from.imu=.*SimCLR encoder of 'imu'"):
    peer_train.PeerTrainer(config, None)


def test_linear_evaluation_freezes_the_encoders_and_finetuning_starts_from_them(
    trials, simclr_dirs, tmp_path):
  source = peer_train.checkpoint.load_state(simclr_dirs["imu"])[1]
  for kind in ("linear_imu", "finetune_imu"):
    config = peers_config.evaluation(kind, ("imu",), simclr_dirs["imu"])
    config.update(dict(batch_size=16, total_steps=3, checkpoint_every=3, eval_every=1,
                       eval_batch_size=8, rng_impl="threefry2x32"))
    config.data.dir = trials
    config.model.num_classes = len(CLASSES)
    small_model(config)
    workdir = str(tmp_path / kind)
    preflight.prepare_workdir(config, workdir)
    trainer = peer_train.PeerTrainer(config, workdir)   # one trainer: its start, then its run
    start = jax.device_get(trainer.init_state())
    jax.tree.map(np.testing.assert_array_equal, start.params["imu"]["encoder"],
                 source["params"]["imu"]["encoder"])
    jax.tree.map(np.testing.assert_array_equal, start.batch_stats["imu"]["encoder"],
                 source["batch_stats"]["imu"]["encoder"])
    trainer.train()
    end = jax.device_get(peer_train.checkpoint.load_state(workdir)[1])
    same = jax.tree.leaves(jax.tree.map(np.array_equal, end["params"]["imu"]["encoder"],
                                        start.params["imu"]["encoder"]))
    stats_same = jax.tree.leaves(jax.tree.map(
        np.array_equal, end["batch_stats"]["imu"]["encoder"], start.batch_stats["imu"]["encoder"]))
    head_same = jax.tree.leaves(jax.tree.map(np.array_equal, end["params"]["classifier"],
                                             start.params["classifier"]))
    assert not any(head_same)
    if kind == "linear_imu":
      assert all(same) and all(stats_same)   # frozen: no update, no running-statistics drift
    else:
      assert not all(same) and not all(stats_same)


def test_plateau_schedule_is_pytorchs_and_halves_the_updates_and_early_stopping_ends(
    trials):
  """config.plateau follows torch's ReduceLROnPlateau(mode="max", factor=0.5) on validation
  accuracy (ties are no improvement), the scale reaches the Adam step, and
  early_stopping_patience ends training after that many evaluations without a lower loss."""
  torch = pytest.importorskip("torch")
  config = stage_config("supervised", trials)
  config.plateau.patience = 2
  config.early_stopping_patience = 4
  accuracies = [0.5, 0.6, 0.6, 0.55, 0.6, 0.7, 0.7, 0.65, 0.6, 0.7]
  losses = [1.0, 0.9, 0.95, 0.9, 0.91, 0.85, 0.86, 0.87, 0.88, 0.9]
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.Adam([param], lr=1.0)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
  want = []
  for a in accuracies:
    sched.step(a)
    want.append(opt.param_groups[0]["lr"])
  trainer = peer_train.PeerTrainer(config, None)
  initial = jax.device_get(trainer.init_state())   # a host copy: the steps below donate theirs
  state = jax.device_put(initial, trainer.state_sharding)
  got, finished = [], []
  for a, loss in zip(accuracies, losses):
    metrics = {"val/accuracy": a, "val/loss": loss}
    state, done = trainer.after_evaluation(state, metrics)
    got.append(metrics["val/learning_rate_scale"])
    finished.append(done)
  assert got == want and min(want) < 1
  # Best loss 0.85 at the 6th evaluation; the 4th evaluation after it without a lower one.
  assert finished == [False] * 9 + [True]
  # The scale reaches the update: from the same start, the step at x0.25 moves every
  # parameter a quarter as far as the step at x1 (Adam's first step is lr * sign(g)).
  batch = input_pipeline.to_global_batch(batch_of(config), trainer.mesh, trainer.data_axes)
  full_state = jax.device_put(initial, trainer.state_sharding)   # scale 1; one step serves both
  start = initial.params
  full, _ = trainer.compiled_step(trainer.pairs_for_step(0))(full_state, batch)
  scaled, _ = trainer.compiled_step(trainer.pairs_for_step(0))(
      state.replace(params=jax.device_put(start, trainer.state_sharding.params)), batch)
  d_full = jax.tree.map(np.subtract, jax.device_get(full.params), start)
  d_scaled = jax.tree.map(np.subtract, jax.device_get(scaled.params), start)
  assert want[-1] == 0.25
  for a, b in zip(jax.tree.leaves(d_scaled), jax.tree.leaves(d_full)):
    np.testing.assert_allclose(a, 0.25 * b, rtol=1e-3, atol=1e-7)


def test_label_fraction_trains_on_a_stratified_subset(trials):
  config = stage_config("supervised", trials)
  config.data.label_fraction = 0.25
  trainer = peer_train.PeerTrainer(config, None)
  trainer.make_train_dataset(8)
  assert trainer.train_examples == 6   # 8 trials per class in train: 2 of each of 3 classes


def test_stage_references_resolve_to_the_same_seeds_stage_folders(trials):
  config = peers_config.get_config("method=cmc_cmkm,epochs=3,seeds=2,semi")
  config.data.dir = trials
  info = records.DatasetInfo.load(trials)
  c = peers.stage_config(config, "pretrain", 1, 1.0, "/w", info)
  assert dict(c.loss.mining_from) == {"imu": "/w/simclr_imu/seed_1", "pose": "/w/simclr_pose/seed_1"}
  assert c.total_steps == 3 * 1 and c.batch_size == 24 and c.model.num_classes == 0
  ev = peers.stage_config(config, "linear_mm", 1, 0.1, "/w", info)
  assert ev.init_from == "/w/pretrain/seed_1" and tuple(ev.freeze) == ("imu", "pose")
  assert ev.model.num_classes == 3 and ev.data.label_fraction == 0.1
  # 1 of 8 per class: 3 labelled trials; a batch is a multiple of the 8 devices (repeats).
  assert ev.batch_size == 8 and ev.eval_every == 1
  assert peers.stage_dir("/w", "linear_mm", 1, 0.1) == "/w/linear_mm/seed_1_labels_0.1"


def test_a_table_row_runs_its_stages_resumes_and_reports_the_paper_figure(trials, tmp_path):
  config = peers_config.get_config("method=cmc,epochs=1,seeds=1")
  config.data.dir = trials
  for stage in config.stages.values():
    stage.eval_batch_size = 8
    small_model(stage)
  workdir = str(tmp_path / "row")
  summary = peers.run(config, workdir)
  assert [r["evaluation"] for r in summary["rows"]] == ["linear_mm", "linear_imu"]
  row = summary["rows"][0]
  assert row["paper_accuracy"] == 96.04 and row["label_fraction"] == 1.0
  assert 0 <= row["accuracy_mean"] <= 100 and row["train_examples"] == [24]
  for stage in config.stage_order:
    assert os.path.exists(os.path.join(workdir, stage, "seed_0", "result.json"))
  result = json.load(open(os.path.join(workdir, "linear_mm", "seed_0", "result.json")))
  assert result["test_examples"] == 8 and result["steps"] == 1
  md = open(os.path.join(workdir, "results.md")).read()
  assert "96.04" in md and "linear_mm" in md
  # Resumed: finished stages are read back, not trained again.
  mtime = os.path.getmtime(os.path.join(workdir, "pretrain", "seed_0", "result.json"))
  again = peers.run(config, workdir)
  assert again["rows"] == summary["rows"]
  assert os.path.getmtime(os.path.join(workdir, "pretrain", "seed_0", "result.json")) == mtime


def test_peer_configs_build_for_every_method():
  for method in peers_config.METHODS:
    config = peers_config.get_config(f"method={method}")
    assert config.evaluations and set(config.evaluations) <= set(config.stage_order)
    for name in config.stage_order:
      stage = config.stages[name]
      for ref in [stage.init_from, *stage.loss.mining_from.values()]:
        assert not ref or config.stage_order.index(ref) < config.stage_order.index(name)
  with pytest.raises(ValueError, match="method='nope'"):
    peers_config.get_config("method=nope")
  semi = peers_config.get_config("method=supervised_mm,semi")
  assert tuple(semi.fractions) == (0.01, 0.05, 0.1, 1.0)
  assert isinstance(semi.stages, ml_collections.ConfigDict)
