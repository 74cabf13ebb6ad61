"""One compiled training step: which parameters it moves, the logit-scale clamp, the
non-finite guard, and the metrics it reports."""

import math

import jax
import numpy as np
import pytest

from configs import pretrain
from mujo_jax import contrastive
from mujo_jax import model as model_lib
from mujo_jax import train

MODALITIES = ("imu", "pose", "text")   # three towers: every single pair leaves one out
ALL_PAIRS = contrastive.all_pairs(MODALITIES)


def tiny_config():
  config = pretrain.get_config("demo")
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.model.modalities = MODALITIES
  config.batch_size = 16
  config.optim.update(learning_rate=1e-3, warmup_steps=0, weight_decay=0.1)
  config.total_steps = 100
  return config


def random_batch(config, seed):
  rng = np.random.default_rng(seed)
  batch = model_lib.dummy_batch(config.model, config.batch_size)
  for key in ("imu", "pose", "video"):
    batch[key] = rng.normal(size=batch[key].shape).astype(np.float16)
  batch["text_ids"] = rng.integers(1, 1000, batch["text_ids"].shape).astype(np.int32)
  batch["text_len"] = rng.integers(3, 64, config.batch_size).astype(np.int32)
  return batch


@pytest.fixture(scope="module")
def setup():
  """A trainer (8 devices), its all-pairs and imu-text steps, and a host copy of the state
  after two all-pairs steps at a non-zero learning rate (so Adam's moments are non-zero)."""
  config = tiny_config()
  trainer = train.Trainer(config, None)
  state = trainer.init_state()
  step_all = trainer.compiled_step(ALL_PAIRS)
  for seed in range(2):
    state, _ = step_all(state, put(trainer, random_batch(config, seed)))
  return trainer, step_all, trainer.compiled_step((("imu", "text"),)), jax.device_get(state)


def put(trainer, batch):
  return jax.device_put(batch, trainer.batch_sharding)


def on_device(trainer, host_state):
  """A fresh device copy (the compiled step donates, i.e. consumes, its input state)."""
  return jax.device_put(host_state, trainer.state_sharding)


def leaves(tree):
  return {train.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def adam(opt_state):
  return opt_state[1][0]


def test_towers_outside_the_step_pairs_get_no_update(setup):
  """random_pair / round_robin steps with one pair: the third tower's parameters and
  Adam moments are bit-identical (no momentum step, no weight decay); the pair's move."""
  trainer, _, step_pair, before = setup
  pairs = (("imu", "text"),)
  assert pairs in contrastive.step_pair_sets("random_pair", MODALITIES)
  assert contrastive.pairs_for_step("round_robin", MODALITIES, 1) == pairs
  assert float(np.abs(adam(before.opt_state).mu["pose"]["head"]["kernel"]).max()) > 0
  after, metrics = step_pair(on_device(trainer, before), put(trainer, random_batch(
      trainer.config, 7)))
  after = jax.device_get(after)
  for name, tree_before, tree_after in (
      ("params", before.params, after.params),
      ("mu", adam(before.opt_state).mu, adam(after.opt_state).mu),
      ("nu", adam(before.opt_state).nu, adam(after.opt_state).nu)):
    old, new = leaves(tree_before["pose"]), leaves(tree_after["pose"])
    for path in old:
      np.testing.assert_array_equal(new[path], old[path], err_msg=f"{name} pose/{path}")
    for tower in ("imu", "text"):
      old, new = leaves(tree_before[tower]), leaves(tree_after[tower])
      assert any(not np.array_equal(new[p], old[p]) for p in old), f"{name} {tower} did not move"
  kernel = lambda s, m: s.params[m]["encoder"]["block_0"]["mlp_in"]["kernel"]
  assert np.abs(kernel(after, "imu") - kernel(before, "imu")).max() > 1e-4
  assert after.params["log_logit_scale"] != before.params["log_logit_scale"]
  assert int(adam(after.opt_state).count) == int(adam(before.opt_state).count) + 1
  assert {k for k in metrics if k.startswith("grad_norm/")} == {
      "grad_norm/imu", "grad_norm/text", "grad_norm/logit_scale"}


def test_grad_norm_metrics_add_up_and_give_the_clip_factor(setup):
  trainer, step_all, _, before = setup
  _, metrics = step_all(on_device(trainer, before), put(trainer, random_batch(trainer.config, 8)))
  m = jax.device_get(metrics)
  per_tower = [m[f"grad_norm/{t}"] for t in MODALITIES] + [m["grad_norm/logit_scale"]]
  assert math.sqrt(sum(float(x) ** 2 for x in per_tower)) == pytest.approx(
      float(m["grad_norm"]), rel=1e-5)
  clip = trainer.config.optim.grad_clip_norm
  assert float(m["clip_factor"]) == pytest.approx(min(1.0, clip / float(m["grad_norm"])))
  assert float(m["skipped"]) == 0.0


def test_logit_scale_parameter_is_clamped_after_the_update(setup):
  """Set beyond the cap, the parameter comes back to log(cap) after one step (a cap on
  the value alone left it there with zero gradient); below the cap it still trains."""
  trainer, step_all, _, before = setup
  batch = random_batch(trainer.config, 9)
  cap = math.log(trainer.model_config.logit_scale_max)
  results = {}
  for start in (math.log(500.0), math.log(50.0)):
    state = on_device(trainer, before.replace(params=dict(
        before.params, log_logit_scale=np.float32(start))))
    state, metrics = step_all(state, put(trainer, batch))
    results[start] = float(state.params["log_logit_scale"]), jax.device_get(metrics)
  assert results[math.log(500.0)][0] == np.float32(cap)
  value, metrics = results[math.log(50.0)]
  assert float(metrics["grad_norm/logit_scale"]) > 0
  assert float(metrics["logit_scale"]) == pytest.approx(50.0, rel=1e-5)
  assert value != np.float32(math.log(50.0)) and value < cap


def test_a_nonfinite_batch_changes_nothing_and_is_counted(setup):
  trainer, step_all, _, before = setup
  bad = random_batch(trainer.config, 10)
  bad["imu"][3, 5, 1] = np.nan
  state, metrics = step_all(on_device(trainer, before), put(trainer, bad))
  assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state)
  assert int(after.step) == int(before.step) + 1       # the data moved on
  for name, want, got in (("params", before.params, after.params),
                          ("opt_state", before.opt_state, after.opt_state)):
    got = leaves(got)
    for path, value in leaves(want).items():
      np.testing.assert_array_equal(got[path], value, err_msg=f"{name}/{path}")
  # The next finite batch trains again, from the unchanged state.
  state, metrics = step_all(state, put(trainer, random_batch(trainer.config, 11)))
  assert float(metrics["skipped"]) == 0.0
  assert not np.array_equal(np.asarray(state.params["imu"]["head"]["kernel"]),
                            before.params["imu"]["head"]["kernel"])
  trainer.check_finite(state, 4)


def test_a_nonfinite_state_is_named_and_refused(setup):
  trainer, _, _, before = setup
  params = jax.tree.map(np.copy, before.params)
  params["pose"]["head"]["kernel"][0, 0] = np.inf
  with pytest.raises(FloatingPointError, match=r"step 3 has non-finite values in 1 leaves "
                                               r"\(params/pose/head/kernel\); not saving"):
    trainer.check_finite(on_device(trainer, before.replace(params=params)), 3)


def test_keep_towers_keeps_every_params_shaped_subtree():
  params = {"imu": {"w": np.ones(2)}, "text": {"w": np.ones(2)}, "log_logit_scale": np.ones(())}
  old = {"params": params, "opt": ({"count": 1, "mu": params},)}
  new = jax.tree.map(lambda x: x + 1, old)
  kept = train.keep_towers(new, old, ("text",))
  assert kept["params"]["text"] is params["text"] and kept["opt"][0]["mu"]["text"] is params["text"]
  assert kept["params"]["imu"] is new["params"]["imu"]
  assert kept["opt"][0]["count"] == 2 and kept["params"]["log_logit_scale"] == 2


def test_summarize_counts_skipped_steps_and_averages_the_applied_ones():
  rows = [{"loss": 1.0, "skipped": 0.0, "grad_norm/imu": 2.0},
          {"loss": np.nan, "skipped": 1.0},
          {"loss": 3.0, "skipped": 0.0}]
  assert train.summarize_steps(rows) == {"loss": 2.0, "grad_norm/imu": 2.0, "skipped": 1}
  summary = train.summarize_steps([{"loss": np.nan, "skipped": 1.0}])
  assert summary["skipped"] == 1 and np.isnan(summary["loss"])
