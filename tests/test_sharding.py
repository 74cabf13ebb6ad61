"""Parameter sharding: the regex rules, and FSDP steps equal to the replicated ones."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import pretrain
from mujo_jax import model as model_lib
from mujo_jax import train


def tiny_config(fsdp: int):
  config = pretrain.get_config("demo")
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.batch_size = 16
  config.optim.warmup_steps = 1  # step 0 has learning rate 0; steps 1, 2 move
  config.mesh.fsdp = fsdp
  return config


def random_batches(config, num, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num):
    batch = model_lib.dummy_batch(config.model, config.batch_size)
    for key in ("imu", "pose", "video"):
      batch[key] = rng.normal(size=batch[key].shape).astype(np.float16)
    batch["text_ids"] = rng.integers(1, 1000, batch["text_ids"].shape).astype(np.int32)
    batch["text_len"] = rng.integers(3, 64, config.batch_size).astype(np.int32)
    batch["modality_mask"] = (rng.random(batch["modality_mask"].shape) < 0.8).astype(np.int32)
    batches.append(batch)
  return batches


def per_device_bytes(tree) -> int:
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def mesh(data, fsdp):
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), devices=jax.devices()[:data * fsdp])


def test_axis_name_rule_splits_the_largest_dimension_that_divides():
  m = mesh(2, 4)
  tree = {"a": {"kernel": np.zeros((32, 2, 16))}, "emb": {"embedding": np.zeros((30522, 32))},
          "odd": {"kernel": np.zeros((3, 5))}, "b": {"bias": np.zeros(64)}, "s": np.zeros(())}
  rules = [(r".*/(kernel|embedding)", "fsdp"), (r".*", ())]
  specs = jax.tree.map(lambda s: s.spec, train.shardings_from_rules(tree, rules, m))
  assert specs["a"]["kernel"] == P("fsdp")
  assert specs["emb"]["embedding"] == P(None, "fsdp")  # 30522 rows do not split in 4
  assert specs["odd"]["kernel"] == P()  # nothing divides: replicated
  assert specs["b"]["bias"] == P() and specs["s"] == P()


def test_explicit_spec_that_does_not_divide_names_the_parameter():
  tree = {"tower": {"kernel": np.zeros((255, 256))}}
  with pytest.raises(ValueError, match=r"'tower/kernel' of shape \(255, 256\): dimension 0 "
                                       r"\(255\) is not divisible by mesh axes 'fsdp' of size 4"):
    train.shardings_from_rules(tree, [(".*", ("fsdp", None))], mesh(2, 4))
  with pytest.raises(ValueError, match="no sharding rule matches parameter 'tower/kernel'"):
    train.shardings_from_rules(tree, [("other", ())], mesh(2, 4))


@pytest.mark.slow  # compiles two 8-device steps
def test_fsdp_steps_equal_replicated_steps_and_hold_a_quarter_of_the_bytes():
  """data=2 x fsdp=4 and data=8 (replicated parameters): same losses and states."""
  pairs = (("imu", "text"), ("imu", "pose"), ("pose", "video"))
  runs = {}
  for fsdp in (1, 4):
    config = tiny_config(fsdp)
    trainer = train.Trainer(config, None)
    assert dict(trainer.mesh.shape) == {"data": 8 // fsdp, "fsdp": fsdp}
    state = trainer.init_state()
    init_params = jax.device_get(state.params)
    bytes_at_init = (per_device_bytes(state.params), per_device_bytes(state.opt_state))
    step = trainer.compiled_step(pairs)
    losses = []
    for batch in random_batches(config, 2):
      state, metrics = step(state, jax.device_put(batch, trainer.batch_sharding))
      losses.append(float(metrics["loss"]))
    runs[fsdp] = (losses, jax.device_get(state), init_params, bytes_at_init,
                  state.params["imu"]["head"]["kernel"].sharding.spec)

  (losses_1, state_1, init_1, bytes_1, _), (losses_4, state_4, init_4, bytes_4, spec_4) = (
      runs[1], runs[4])
  np.testing.assert_allclose(losses_4, losses_1, rtol=1e-5)
  assert int(state_4.step) == 2
  # Step 1 runs at the peak learning rate (1e-3): AdamW moves parameters by ~1e-3,
  # so 1e-5 tells a wrong update from rounding. (Rounding alone can move a leaf
  # whose true gradient is 0, e.g. attention key biases, by ~1e-6.)
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(state_1.params), jax.tree.leaves(init_1)))
  assert moved > 5e-4
  for x, y in zip(jax.tree.leaves(init_1), jax.tree.leaves(init_4)):
    np.testing.assert_array_equal(x, y)  # the same initial parameters, however sharded
  for name, tree_1, tree_4, atol in (("params", state_1.params, state_4.params, 1e-5),
                                     ("opt_state", state_1.opt_state, state_4.opt_state, 1e-6)):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(tree_1)[0],
                            jax.tree.leaves(tree_4)):
      np.testing.assert_allclose(y, x, atol=atol, rtol=1e-3,
                                 err_msg=f"{name}/{train.path_str(path)}")
  # The state stays sharded after the steps, and per-device bytes shrink ~4x.
  assert "fsdp" in spec_4
  assert bytes_4[0] < 0.35 * bytes_1[0] and bytes_4[1] < 0.35 * bytes_1[1], (bytes_4, bytes_1)
