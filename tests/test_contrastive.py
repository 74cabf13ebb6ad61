"""Tests for the global contrastive loss, its sharded form, pair strategies and recall."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy.special import logsumexp

from mujo_jax import contrastive

N, D = 32, 8  # 8 devices -> 4 rows each; D != N so HLO shapes are unambiguous.
ALL_PAIRS = (("imu", "pose"), ("imu", "video"), ("imu", "text"),
             ("pose", "video"), ("pose", "text"), ("video", "text"))


def normalised(rng, n=N, d=D):
  z = rng.normal(size=(n, d)).astype(np.float32)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def naive_pair_sums(za, zb, valid, scale):
  """Loops in float64: (sum a->b, sum b->a, count) of per-row cross-entropies."""
  za, zb = za.astype(np.float64), zb.astype(np.float64)
  idx = [i for i in range(len(za)) if valid[i]]

  def direction(queries, candidates):
    total = 0.0
    for i in idx:
      logits = [scale * float(queries[i] @ candidates[j]) for j in idx]
      total += logsumexp(logits) - scale * float(queries[i] @ candidates[i])
    return total

  return direction(za, zb), direction(zb, za), len(idx)


def naive_pair_loss(za, zb, valid, scale):
  ab, ba, count = naive_pair_sums(za, zb, valid, scale)
  return 0.5 * (ab + ba) / count if count else 0.0


@pytest.fixture(scope="module", params=["explicit", "auto"])
def mesh(request):
  """jax.make_mesh's default (Explicit axes, what train.make_mesh builds) and Auto axes."""
  assert jax.device_count() == 8
  axis_type = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[request.param]
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def random_batch(seed=0):
  """Embeddings for all four modalities and masks with awkward patterns."""
  rng = np.random.default_rng(seed)
  embeddings = {m: normalised(rng) for m in contrastive.MODALITIES}
  masks = {m: rng.random(N) < 0.7 for m in contrastive.MODALITIES}
  masks["text"][8:12] = False  # device 2 holds no text: its text columns are all invalid
  masks["video"][:] = False
  masks["video"][[3, 17, 30]] = True  # a pair with only a few valid rows on few devices
  masks["pose"] = masks["pose"].astype(np.int32)  # 0/1 ints are accepted too
  return embeddings, masks


@pytest.mark.parametrize("use_mask", [False, True])
def test_dense_reference_matches_naive_numpy(use_mask):
  rng = np.random.default_rng(1)
  za, zb = normalised(rng, 20, 6), normalised(rng, 20, 6)
  valid = rng.random(20) < 0.6 if use_mask else np.ones(20, bool)
  scale = 7.5
  ab, ba, count = contrastive.pairwise_infonce(za, zb, valid if use_mask else None, scale)
  want_ab, want_ba, want_count = naive_pair_sums(za, zb, valid, scale)
  np.testing.assert_allclose([ab, ba], [want_ab, want_ba], rtol=1e-5)
  assert float(count) == want_count
  assert abs(want_ab - want_ba) > 1e-3  # the two directions really differ


def test_dense_total_is_sum_of_naive_pair_losses():
  embeddings, masks = random_batch(seed=2)
  pairs = (("imu", "pose"), ("imu", "text"), ("pose", "text"))
  total, per_pair = contrastive.dense_contrastive_loss(embeddings, masks, pairs, 12.0)
  want = {f"{a}_{b}": naive_pair_loss(embeddings[a], embeddings[b],
                                      masks[a].astype(bool) & masks[b].astype(bool), 12.0)
          for a, b in pairs}
  assert set(per_pair) == set(want)
  for name, value in want.items():
    np.testing.assert_allclose(per_pair[name], value, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(total, sum(want.values()), rtol=1e-5)


def shard(mesh, tree):
  return jax.device_put(tree, NamedSharding(mesh, P("data")))


def sharded_and_dense_fns(mesh, pairs):
  def sharded(embeddings, scale, masks):
    return contrastive.contrastive_loss(embeddings, masks, pairs, scale, mesh)

  def dense(embeddings, scale, masks):
    return contrastive.dense_contrastive_loss(embeddings, masks, pairs, scale)

  return sharded, dense


def test_sharded_loss_and_gradients_match_dense(mesh):
  embeddings, masks = random_batch(seed=3)
  pairs = (("imu", "pose"), ("imu", "video"), ("imu", "text"), ("pose", "text"))
  scale = jnp.float32(9.0)
  sharded, dense = sharded_and_dense_fns(mesh, pairs)
  emb_sharded, masks_sharded = shard(mesh, embeddings), shard(mesh, masks)
  assert emb_sharded["imu"].sharding.spec == P("data")

  total, per_pair = jax.jit(sharded)(emb_sharded, scale, masks_sharded)
  want_total, want_per_pair = jax.jit(dense)(embeddings, scale, masks)
  assert set(per_pair) == {"imu_pose", "imu_video", "imu_text", "pose_text"}
  for name in want_per_pair:
    np.testing.assert_allclose(per_pair[name], want_per_pair[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  # And both agree with the independent numpy loops.
  np.testing.assert_allclose(per_pair["imu_text"], naive_pair_loss(
      embeddings["imu"], embeddings["text"], masks["imu"] & masks["text"], 9.0), rtol=1e-5)

  grad_sharded = jax.jit(jax.grad(lambda e, s, m: sharded(e, s, m)[0], argnums=(0, 1)))
  grad_dense = jax.jit(jax.grad(lambda e, s, m: dense(e, s, m)[0], argnums=(0, 1)))
  (g_emb, g_scale) = grad_sharded(emb_sharded, scale, masks_sharded)
  (want_emb, want_scale) = grad_dense(embeddings, scale, masks)
  for m in want_emb:
    np.testing.assert_allclose(g_emb[m], want_emb[m], atol=1e-6, rtol=1e-5, err_msg=m)
  np.testing.assert_allclose(g_scale, want_scale, atol=1e-6, rtol=1e-5)
  # The gradient is not trivially zero, and rows without a pair partner get none.
  assert np.abs(want_emb["imu"]).max() > 1e-3
  only_in_no_pair = ~masks["imu"] | ~(masks["pose"].astype(bool) | masks["video"] | masks["text"])
  np.testing.assert_array_equal(np.asarray(g_emb["imu"])[only_in_no_pair], 0.0)


def test_sharded_loss_on_data_by_fsdp_mesh():
  """The trainer's (data, fsdp) mesh: fsdp replicas compute the same global loss."""
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
  embeddings, masks = random_batch(seed=4)
  sharded, dense = sharded_and_dense_fns(mesh, ALL_PAIRS)
  total, per_pair = jax.jit(sharded)(shard(mesh, embeddings), 5.0, shard(mesh, masks))
  want_total, want_per_pair = dense(embeddings, 5.0, masks)
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  for name in want_per_pair:
    np.testing.assert_allclose(per_pair[name], want_per_pair[name], rtol=1e-5, err_msg=name)


def test_each_device_computes_only_its_logits_block(mesh):
  embeddings, masks = random_batch(seed=5)
  pairs = (("imu", "text"),)
  sharded, _ = sharded_and_dense_fns(mesh, pairs)
  step = jax.jit(jax.value_and_grad(lambda e, s, m: sharded(e, s, m)[0], argnums=(0, 1)))
  hlo = step.lower(shard(mesh, embeddings), jnp.float32(3.0), shard(mesh, masks)).compile().as_text()
  n_local = N // 8
  assert f"f32[{n_local},{N}]" in hlo  # the local block of logits
  assert f"f32[{N},{D}]" in hlo  # the gathered embeddings
  assert f"[{N},{N}]" not in hlo  # never the global matrix


def test_pair_without_valid_examples_is_zero_and_finite(mesh):
  embeddings, masks = random_batch(seed=6)
  masks["text"][:] = False
  pairs = (("imu", "text"), ("imu", "pose"))
  sharded, dense = sharded_and_dense_fns(mesh, pairs)
  for fn, emb, msk in ((sharded, shard(mesh, embeddings), shard(mesh, masks)),
                       (dense, embeddings, masks)):
    total, per_pair = jax.jit(fn)(emb, 20.0, msk)
    assert float(per_pair["imu_text"]) == 0.0
    np.testing.assert_allclose(total, per_pair["imu_pose"], rtol=1e-6)
    # jit(grad), as the trainer does: on an Explicit-axes mesh, grad of a jitted
    # function called eagerly needs `jax.set_mesh` (a JAX rule, not this module's).
    grads = jax.jit(jax.grad(lambda e, m: fn(e, 20.0, m)[0]))(emb, msk)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    np.testing.assert_array_equal(grads["text"], 0.0)


def test_aligned_embeddings_give_zero_loss(mesh):
  z = np.eye(N, D * 4, dtype=np.float32)  # orthonormal rows
  embeddings = {"imu": z, "pose": z}
  masks = {"imu": np.ones(N, bool), "pose": np.ones(N, bool)}
  total, _ = jax.jit(sharded_and_dense_fns(mesh, (("imu", "pose"),))[0])(
      shard(mesh, embeddings), 100.0, shard(mesh, masks))
  assert 0.0 <= float(total) < 1e-6


def test_identical_rows_give_log_num_valid(mesh):
  rng = np.random.default_rng(7)
  embeddings = {"imu": np.tile(normalised(rng, 1), (N, 1)),
                "pose": np.tile(normalised(rng, 1), (N, 1))}
  masks = {"imu": np.arange(N) % 3 != 0, "pose": np.arange(N) < 29}
  num_valid = int(np.sum(masks["imu"] & masks["pose"]))
  sharded, dense = sharded_and_dense_fns(mesh, (("imu", "pose"),))
  total, _ = jax.jit(sharded)(shard(mesh, embeddings), 30.0, shard(mesh, masks))
  np.testing.assert_allclose(total, np.log(num_valid), rtol=1e-5)
  np.testing.assert_allclose(dense(embeddings, 30.0, masks)[0], np.log(num_valid), rtol=1e-5)


def test_batch_not_divisible_by_data_axis_is_rejected(mesh):
  rng = np.random.default_rng(8)
  embeddings = {"imu": normalised(rng, 12), "pose": normalised(rng, 12)}
  masks = {"imu": np.ones(12, bool), "pose": np.ones(12, bool)}
  with pytest.raises(ValueError, match="divisible"):
    contrastive.contrastive_loss(embeddings, masks, (("imu", "pose"),), 1.0, mesh)
  with pytest.raises(ValueError, match="'text'"):
    contrastive.contrastive_loss(embeddings, masks, (("imu", "text"),), 1.0, mesh)


# ---------------------------------------------------------------- chunked loss


def loss_and_grads(fn, embeddings, scale, masks):
  """jit(value_and_grad) of fn's total w.r.t. the embeddings and the logit scale."""
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
  (total, per_pair), (g_emb, g_scale) = step(embeddings, scale, masks)
  return total, per_pair, g_emb, g_scale


def assert_same_loss_and_grads(got, want):
  total, per_pair, g_emb, g_scale = got
  want_total, want_per_pair, want_emb, want_scale = want
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  assert set(per_pair) == set(want_per_pair)
  for name in want_per_pair:  # atol: a pair with one valid row has loss 0 up to rounding
    np.testing.assert_allclose(per_pair[name], want_per_pair[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  for m in want_emb:
    np.testing.assert_allclose(g_emb[m], want_emb[m], atol=1e-6, rtol=1e-5, err_msg=m)
  np.testing.assert_allclose(g_scale, want_scale, atol=1e-6, rtol=1e-5)


# 1: one column at a time; 5: N = 32 is no multiple (padded last chunk); 32: one
# chunk = N. (Sizes above N are clipped to N.)
@pytest.mark.parametrize("chunk_size", [1, 5, 32])
def test_chunked_loss_and_gradients_equal_the_unchunked(chunk_size):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  embeddings, masks = random_batch(seed=10)
  # imu_video: 3 valid rows on 3 devices; imu_text: device 2 has no text columns.
  pairs = (("imu", "video"), ("imu", "text"))
  scale = jnp.float32(11.0)
  emb, msk = shard(mesh, embeddings), shard(mesh, masks)
  unchunked = lambda e, s, m: contrastive.contrastive_loss(e, m, pairs, s, mesh)
  chunked = lambda e, s, m: contrastive.contrastive_loss(e, m, pairs, s, mesh,
                                                         chunk_size=chunk_size)
  want = loss_and_grads(unchunked, emb, scale, msk)
  got = loss_and_grads(chunked, emb, scale, msk)
  assert_same_loss_and_grads(got, want)
  assert np.abs(want[2]["imu"]).max() > 1e-3 and abs(float(want[3])) > 1e-4


def test_chunked_loss_holds_only_chunk_wide_logits():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  embeddings, masks = random_batch(seed=11)
  fn = lambda e, s, m: contrastive.contrastive_loss(e, m, (("imu", "text"),), s, mesh,
                                                    chunk_size=8)
  step = jax.jit(jax.value_and_grad(lambda e, s, m: fn(e, s, m)[0], argnums=(0, 1)))
  hlo = step.lower(shard(mesh, embeddings), jnp.float32(3.0), shard(mesh, masks)).compile().as_text()
  n_local = N // 8
  assert f"f32[{n_local},8]" in hlo  # one chunk of logits
  assert f"f32[{n_local},{N}]" not in hlo and f"[{N},{N}]" not in hlo


def test_chunked_pair_without_valid_examples_is_zero_and_finite():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  embeddings, masks = random_batch(seed=12)
  masks["text"][:] = False
  fn = lambda e, m: contrastive.contrastive_loss(e, m, (("imu", "text"), ("imu", "pose")), 20.0,
                                                 mesh, chunk_size=3)
  emb, msk = shard(mesh, embeddings), shard(mesh, masks)
  total, per_pair = jax.jit(fn)(emb, msk)
  assert float(per_pair["imu_text"]) == 0.0
  np.testing.assert_allclose(total, per_pair["imu_pose"], rtol=1e-6)
  grads = jax.jit(jax.grad(lambda e, m: fn(e, m)[0]))(emb, msk)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  np.testing.assert_array_equal(grads["text"], 0.0)


@pytest.mark.parametrize("chunk_size", [0, 6])
def test_loss_sharded_over_data_and_fsdp_axes_matches_dense(chunk_size):
  """The trainer's batch layout with fsdp > 1: rows sharded over ("data", "fsdp")."""
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
  embeddings, masks = random_batch(seed=13)
  pairs = (("imu", "video"), ("pose", "text"))
  scale = jnp.float32(6.0)
  placed = lambda tree: jax.device_put(tree, NamedSharding(mesh, P(("data", "fsdp"))))
  sharded = lambda e, s, m: contrastive.contrastive_loss(
      e, m, pairs, s, mesh, data_axis=("data", "fsdp"), chunk_size=chunk_size)
  dense = lambda e, s, m: contrastive.dense_contrastive_loss(e, m, pairs, s)
  got = loss_and_grads(sharded, placed(embeddings), scale, placed(masks))
  want = loss_and_grads(dense, embeddings, scale, masks)
  assert_same_loss_and_grads(got, want)


def test_negative_chunk_size_is_rejected(mesh):
  embeddings, masks = random_batch(seed=14)
  with pytest.raises(ValueError, match="chunk_size must be >= 0"):
    contrastive.contrastive_loss(embeddings, masks, (("imu", "pose"),), 1.0, mesh, chunk_size=-1)


# ---------------------------------------------------------------- strategies

MODALITIES = ("text", "imu", "video", "pose")  # any order in; canonical order out


def test_all_pairs_gives_six_in_canonical_order():
  assert contrastive.pairs_for_step("all_pairs", MODALITIES, step=5) == ALL_PAIRS
  assert contrastive.pairs_for_step("all_pairs", ("imu", "text"), 0) == (("imu", "text"),)


def test_imu_anchored_gives_only_imu_pairs():
  pairs = contrastive.pairs_for_step("imu_anchored", MODALITIES, step=0)
  assert pairs == (("imu", "pose"), ("imu", "video"), ("imu", "text"))
  with pytest.raises(ValueError, match="imu"):
    contrastive.pairs_for_step("imu_anchored", ("pose", "video", "text"), 0)


def test_round_robin_cycles_in_order():
  got = [contrastive.pairs_for_step("round_robin", MODALITIES, step) for step in range(14)]
  assert all(len(p) == 1 for p in got)
  assert [p[0] for p in got] == [ALL_PAIRS[s % 6] for s in range(14)]


def test_random_pair_is_deterministic_varied_and_uniform():
  draw = lambda step, seed=0: contrastive.pairs_for_step("random_pair", MODALITIES, step, seed)
  assert all(len(draw(s)) == 1 and draw(s)[0] in ALL_PAIRS for s in range(20))
  assert [draw(s) for s in range(50)] == [draw(s) for s in range(50)]
  assert len({draw(s) for s in range(20)}) > 1
  assert [draw(s, seed=1) for s in range(50)] != [draw(s, seed=0) for s in range(50)]
  counts = collections.Counter(draw(s)[0] for s in range(3000))
  assert set(counts) == set(ALL_PAIRS)
  assert all(400 < c < 600 for c in counts.values()), counts  # 500 expected, sd ~20


@pytest.mark.parametrize("strategy", contrastive.STRATEGIES)
def test_step_pair_sets_cover_every_step_of_a_strategy(strategy):
  """The trainer compiles exactly these up front: every step's pairs must be among them."""
  for modalities in (MODALITIES, ("imu", "pose", "text")):
    sets = contrastive.step_pair_sets(strategy, modalities)
    assert len(set(sets)) == len(sets)
    drawn = {contrastive.pairs_for_step(strategy, modalities, s, seed) for s in range(200)
             for seed in (0, 3)}
    assert drawn == set(sets), (strategy, modalities)
  with pytest.raises(ValueError, match="two modalities"):
    contrastive.step_pair_sets(strategy, ("imu",))


def test_strategy_errors():
  with pytest.raises(ValueError, match="all_pairs.*random_pair.*round_robin.*imu_anchored"):
    contrastive.pairs_for_step("every_other", MODALITIES, 0)
  with pytest.raises(ValueError, match="two modalities"):
    contrastive.pairs_for_step("round_robin", ("imu",), 0)
  with pytest.raises(ValueError, match="unknown modalities"):
    contrastive.pairs_for_step("all_pairs", ("imu", "audio"), 0)


# ---------------------------------------------------------------- retrieval


def test_recall_identity_match_is_one():
  z = normalised(np.random.default_rng(9), 300, 64)
  recall = contrastive.retrieval_recall(z, z, ks=(1, 5), chunk_rows=64)
  assert recall == {"recall@1_a_to_b": 1.0, "recall@5_a_to_b": 1.0,
                    "recall@1_b_to_a": 1.0, "recall@5_b_to_a": 1.0}


def test_recall_with_known_swaps_and_ranks():
  n = 100
  za = np.eye(n, dtype=np.float32)
  zb = za.copy()
  # Rows 0..9: b is swapped in pairs (0<->1, 2<->3, ...): a_i's best b is the
  # wrong one, its match ties at 0 with everything else -> fails @1 and @5.
  zb[:10] = zb[np.arange(10) ^ 1]
  # Rows 10..19: b_i is a mix that makes a_i rank its match 2nd -> fails @1, passes @5.
  for i in range(10, 20):
    zb[i] = 0.6 * za[i] + 0.8 * za[i + 20]  # a_{i+20} prefers b_i (0.8) over b_{i+20} (1.0)? no
  recall = contrastive.retrieval_recall(za, zb, ks=(1, 5), chunk_rows=7)
  # a->b: rows 0..9 score 0 with their match (ties with ~all) -> fail; rows 10..19
  # score 0.6 with their match and nothing beats it -> pass; others exact -> pass.
  assert recall["recall@1_a_to_b"] == pytest.approx(0.90)
  assert recall["recall@5_a_to_b"] == pytest.approx(0.90)
  # b->a: b_i (i in 10..19) scores 0.8 on a_{i+20} > 0.6 on a_i -> rank 1: fail @1, pass @5.
  assert recall["recall@1_b_to_a"] == pytest.approx(0.80)
  assert recall["recall@5_b_to_a"] == pytest.approx(0.90)


def test_recall_respects_valid_mask():
  n = 50
  za = np.eye(n, dtype=np.float32)
  zb = za.copy()
  zb[:5] = zb[np.arange(5) ^ 1]  # rows 0..4 wrong (4 swaps 0..3 plus 4<->5)
  valid = np.arange(n) >= 6
  recall = contrastive.retrieval_recall(za, zb, ks=(1,), valid=valid)
  assert recall == {"recall@1_a_to_b": 1.0, "recall@1_b_to_a": 1.0}
  assert np.isnan(contrastive.retrieval_recall(za, zb, valid=np.zeros(n, bool))["recall@1_a_to_b"])
