"""Tests for the SimCLR (NT-Xent) and CMC-CMKM losses: numpy transcriptions, sharding, behaviour."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mujo_jax import contrastive
from mujo_jax import ssl_losses

AXES = ("data", "fsdp")
T = 0.1


def normalised(rng, n, d):
  z = rng.normal(size=(n, d)).astype(np.float32)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def naive_ntxent(z1, z2, temperature):
  """Loops in float64 over the 2N views: cross-entropy against the other view of the anchor."""
  views = np.concatenate([z1, z2]).astype(np.float64)
  n = len(z1)
  total = 0.0
  for a in range(2 * n):
    positive = (a + n) % (2 * n)
    candidates = [b for b in range(2 * n) if b != a]
    logits = {b: float(views[a] @ views[b]) / temperature for b in candidates}
    total += -math.log(math.exp(logits[positive]) / sum(math.exp(v) for v in logits.values()))
  return total / (2 * n)


def naive_mined(mine, i, k):
  """The set of the k samples j != i most similar to i (ties: lower index first)."""
  sims = mine.astype(np.float64) @ mine[i].astype(np.float64)
  others = sorted((j for j in range(len(mine)) if j != i), key=lambda j: (-sims[j], j))
  return set(others[:k])


def naive_cmkm(za, zb, mine_a, mine_b, temperature, k, lam, ti=1.0):
  """The CMKM formulas row by row, with explicit sets, in float64."""
  za, zb = za.astype(np.float64), zb.astype(np.float64)
  n = len(za)
  total = 0.0
  # Anchors of a: cross columns zb with P_b, intra columns za with P_a; then b, swapped.
  for x, y, mine_x, mine_y in ((za, zb, mine_a, mine_b), (zb, za, mine_b, mine_a)):
    for i in range(n):
      p_cross = naive_mined(mine_y, i, k)
      p_intra = naive_mined(mine_x, i, k)
      cross = np.exp(x[i] @ y.T / temperature)  # [n]: exp(s_xy[i, j] / T)
      intra = np.exp(x[i] @ x.T / ti)  # [n]: exp(s_xx[i, j] / Ti)
      numerator = cross[i] + sum(cross[j] for j in p_cross) + sum(intra[j] for j in p_intra)
      denominator = (sum(cross[j] for j in range(n) if j != i and j not in p_cross)
                     + lam * sum(intra[j] for j in range(n) if j != i and j not in p_intra))
      total += -math.log(numerator / (numerator + denominator))
  return total / (2 * n)


def cmkm_batch(seed, n=16, d=8, f=(6, 10)):
  rng = np.random.default_rng(seed)
  return (normalised(rng, n, d), normalised(rng, n, d), normalised(rng, n, f[0]),
          normalised(rng, n, f[1]))


# ------------------------------------------------------------- dense references


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_dense_ntxent_matches_numpy(temperature):
  rng = np.random.default_rng(0)
  z1, z2 = normalised(rng, 12, 5), normalised(rng, 12, 5)
  got = ssl_losses.dense_ntxent_loss(z1, z2, temperature)
  np.testing.assert_allclose(got, naive_ntxent(z1, z2, temperature), rtol=1e-5)


def test_ntxent_of_identical_views_of_orthogonal_rows():
  """Each anchor: positive cos 1, 2N-2 negatives cos 0 -> log(e^(1/T) + 2N-2) - 1/T."""
  z = np.eye(8, 16, dtype=np.float32)
  want = math.log(math.exp(1 / 0.5) + 14) - 1 / 0.5
  np.testing.assert_allclose(ssl_losses.dense_ntxent_loss(z, z, 0.5), want, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("lam", [0.0, 1.0, 0.5])
def test_dense_cmkm_matches_numpy(k, lam):
  za, zb, mine_a, mine_b = cmkm_batch(seed=10 + k, n=12)
  got = ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b, T, k=k, intra_negative_weight=lam)
  np.testing.assert_allclose(got, naive_cmkm(za, zb, mine_a, mine_b, T, k, lam), rtol=1e-5)
  # The two modalities' mined sets really differ, so a P_a/P_b swap would show.
  assert any(naive_mined(mine_a, i, k) != naive_mined(mine_b, i, k) for i in range(12))


def test_dense_cmkm_intra_temperature_matches_numpy():
  za, zb, mine_a, mine_b = cmkm_batch(seed=20, n=12)
  got = ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b, 0.2, k=2, intra_negative_weight=0.7,
                                   intra_temperature=0.3)
  want = naive_cmkm(za, zb, mine_a, mine_b, 0.2, 2, 0.7, ti=0.3)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cmc_is_contrastive_loss_with_scale_one_over_t():
  """CMC = contrastive.contrastive_loss of one pair with logit_scale 1/T (module docstring)."""
  rng = np.random.default_rng(30)
  za, zb = normalised(rng, 12, 6), normalised(rng, 12, 6)
  s = za.astype(np.float64) @ zb.T.astype(np.float64) / T
  rows = [s[i, i] - np.log(np.sum(np.exp(s[i]))) for i in range(12)]  # a -> b
  rows += [s[i, i] - np.log(np.sum(np.exp(s[:, i]))) for i in range(12)]  # b -> a
  want = -np.mean(rows)
  ones = np.ones(12, bool)
  got, _ = contrastive.dense_contrastive_loss({"imu": za, "pose": zb}, {"imu": ones, "pose": ones},
                                              (("imu", "pose"),), 1.0 / T)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # CMKM without mining and without intra-modal negatives is exactly CMC.
  mine_a, mine_b = normalised(rng, 12, 4), normalised(rng, 12, 4)
  np.testing.assert_allclose(ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b, T, k=0,
                                                        intra_negative_weight=0.0), want, rtol=1e-5)


# --------------------------------------------------------------------- mining


def test_mined_sets_exclude_the_anchor_even_when_a_duplicate_ties():
  za, zb, mine_a, mine_b = cmkm_batch(seed=40, n=12)
  mine_a[7] = mine_a[3]  # 3 and 7 tie with each other's own similarity
  mine_b[2] = mine_b[9] = mine_b[5]  # a triple
  mine_b[0] = -mine_b[1]
  mine_b[1:] *= np.sign(mine_b[1:] @ mine_b[1])[:, None]  # every other sample dislikes sample 0
  assert np.all(mine_b[1:] @ mine_b[0] < 0)
  assert naive_mined(mine_a, 3, 1) == {7} and naive_mined(mine_b, 2, 2) == {5, 9}
  for k in (1, 2):
    got = ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b, T, k=k)
    np.testing.assert_allclose(got, naive_cmkm(za, zb, mine_a, mine_b, T, k, 1.0), rtol=1e-5)


def structured_batch(n=8):
  """Cross similarities all 0; za's close pairs are (0,1), (2,3), ..., zb's (1,2), ..., (n-1,0).

  mine_p mines the za pairing (each sample's partner uniquely), mine_q the zb one.
  """
  eye = np.eye(n, dtype=np.float32)
  p_group = np.arange(n) // 2
  q_group = ((np.arange(n) + 1) % n) // 2
  za = eye[p_group]  # identical within a pair: cos 1, else 0
  zb = eye[n // 2 + q_group]  # other dimensions: za . zb = 0
  mine_p = eye[p_group][:, :n // 2]
  mine_q = eye[q_group][:, :n // 2]
  return za, zb, mine_p, mine_q


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_each_modality_mines_its_own_intra_positives(lam):
  """Closed forms on `structured_batch`: the intra positives of a come from mine_a, b's from mine_b.

  Cross terms are all exp(0) = 1: numerator 1 + k, denominator N - 1 - k. With
  the right mining each anchor's intra positive is its cos-1 partner; mined with
  the other modality's features it is a cos-0 sample and the partner becomes a
  lambda-weighted negative. A P_a/P_b swap gives the second value.
  """
  n, ti = 8, 0.5
  za, zb, mine_p, mine_q = structured_batch(n)
  e = math.exp(1 / ti)
  right = math.log((n + e + lam * (n - 2)) / (2 + e))
  wrong = math.log((n + 1 + lam * (e + n - 3)) / 3)
  got_right = ssl_losses.dense_cmkm_loss(za, zb, mine_p, mine_q, T, k=1, intra_negative_weight=lam,
                                         intra_temperature=ti)
  got_wrong = ssl_losses.dense_cmkm_loss(za, zb, mine_q, mine_p, T, k=1, intra_negative_weight=lam,
                                         intra_temperature=ti)
  np.testing.assert_allclose(got_right, right, rtol=1e-5)
  np.testing.assert_allclose(got_wrong, wrong, rtol=1e-5)
  assert right < wrong


def test_cross_positives_are_mined_with_the_other_modality():
  """Mining an anchor's true cross-modal neighbour lowers the loss; the other side's features do.

  zb[i] is close to za[partner(i)] (partners (0,1), (2,3), ...), so each
  anchor's best extra cross positive is its partner on the other side: the
  a-anchors find it when mine_b pairs partners, the b-anchors when mine_a does.
  The intra terms are flattened (huge Ti, lambda 0) so only the cross rows count.
  """
  n = 8
  rng = np.random.default_rng(50)
  za = normalised(rng, n, 32)
  partner = np.arange(n) ^ 1
  zb = 0.3 * normalised(rng, n, 32) + za[partner]
  zb /= np.linalg.norm(zb, axis=1, keepdims=True)
  eye = np.eye(n, dtype=np.float32)
  pairs_mine = eye[np.arange(n) // 2]  # partner uniquely most similar
  random_mine = normalised(rng, n, 6)
  loss = lambda ma, mb: float(ssl_losses.dense_cmkm_loss(
      za, zb, ma, mb, T, k=1, intra_negative_weight=0.0, intra_temperature=1e6))
  both = loss(pairs_mine, pairs_mine)
  only_b = loss(random_mine, pairs_mine)  # helps the a-anchors' cross rows
  only_a = loss(pairs_mine, random_mine)  # helps the b-anchors' cross rows
  neither = loss(random_mine, random_mine)
  assert both < only_b < neither and both < only_a < neither
  for ma, mb in ((random_mine, pairs_mine), (pairs_mine, random_mine)):
    np.testing.assert_allclose(loss(ma, mb), naive_cmkm(za, zb, ma, mb, T, 1, 0.0, ti=1e6),
                               rtol=1e-5)


def test_lambda_zero_has_finite_gradients_and_no_mining_gradient():
  za, zb, mine_a, mine_b = cmkm_batch(seed=60, n=12)
  grads = jax.jit(jax.grad(
      lambda *args: ssl_losses.dense_cmkm_loss(*args, T, k=2, intra_negative_weight=0.0),
      argnums=(0, 1, 2, 3)))(za, zb, mine_a, mine_b)
  assert all(np.isfinite(g).all() for g in grads)
  assert np.abs(grads[0]).max() > 1e-3
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


# ------------------------------------------------------------------- sharding


@pytest.fixture(scope="module", params=[(8, 1), (4, 2)], ids=["data8", "data4_fsdp2"])
def mesh(request):
  assert jax.device_count() == 8
  return jax.make_mesh(request.param, AXES)


def shard(mesh, *arrays):
  return tuple(jax.device_put(a, NamedSharding(mesh, P(AXES))) for a in arrays)


def test_sharded_ntxent_matches_dense_in_value_and_gradients(mesh):
  rng = np.random.default_rng(70)
  z1, z2 = normalised(rng, 32, 8), normalised(rng, 32, 8)
  temperature = jnp.float32(0.2)
  sharded = jax.jit(jax.value_and_grad(
      lambda a, b, t: ssl_losses.ntxent_loss(a, b, t, mesh), argnums=(0, 1)))
  dense = jax.jit(jax.value_and_grad(ssl_losses.dense_ntxent_loss, argnums=(0, 1)))
  value, grads = sharded(*shard(mesh, z1, z2), temperature)
  want_value, want_grads = dense(z1, z2, temperature)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(value, naive_ntxent(z1, z2, 0.2), rtol=1e-5)
  for g, want in zip(grads, want_grads):
    np.testing.assert_allclose(g, want, atol=1e-6, rtol=1e-5)
  assert np.abs(want_grads[1]).max() > 1e-3


def test_sharded_ntxent_on_a_single_named_axis():
  mesh = jax.make_mesh((8,), ("data",))
  rng = np.random.default_rng(71)
  z1, z2 = normalised(rng, 16, 4), normalised(rng, 16, 4)
  z1_s, z2_s = (jax.device_put(z, NamedSharding(mesh, P("data"))) for z in (z1, z2))
  got = jax.jit(lambda a, b: ssl_losses.ntxent_loss(a, b, 0.1, mesh, "data"))(z1_s, z2_s)
  np.testing.assert_allclose(got, ssl_losses.dense_ntxent_loss(z1, z2, 0.1), rtol=1e-5)


@pytest.mark.parametrize("k,lam", [(1, 1.0), (2, 0.5)])
def test_sharded_cmkm_matches_dense_in_value_and_gradients(mesh, k, lam):
  za, zb, mine_a, mine_b = cmkm_batch(seed=80 + k, n=32 if k == 1 else 16)
  mine_a[5] = mine_a[20 % len(mine_a)]  # a duplicate across shards: self must still be excluded
  settings = {"k": k, "intra_negative_weight": lam, "intra_temperature": 0.8}
  sharded = jax.jit(jax.value_and_grad(
      lambda *args: ssl_losses.cmkm_loss(*args, T, mesh, **settings), argnums=(0, 1, 2, 3)))
  dense = jax.jit(jax.value_and_grad(
      lambda *args: ssl_losses.dense_cmkm_loss(*args, T, **settings), argnums=(0, 1, 2, 3)))
  value, grads = sharded(*shard(mesh, za, zb, mine_a, mine_b))
  want_value, want_grads = dense(za, zb, mine_a, mine_b)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(value, naive_cmkm(za, zb, mine_a, mine_b, T, k, lam, ti=0.8),
                             rtol=1e-5)
  for g, want in zip(grads, want_grads):
    np.testing.assert_allclose(g, want, atol=1e-6, rtol=1e-5)
  assert np.abs(want_grads[0]).max() > 1e-3 and np.abs(want_grads[1]).max() > 1e-3
  np.testing.assert_array_equal(grads[2], 0.0)


def test_each_device_computes_only_its_rows():
  mesh = jax.make_mesh((8, 1), AXES)
  n, d = 32, 8
  za, zb, mine_a, mine_b = cmkm_batch(seed=90, n=n, d=d)
  step = jax.jit(jax.value_and_grad(lambda a, b, ma, mb: ssl_losses.cmkm_loss(a, b, ma, mb, T,
                                                                              mesh)))
  hlo = step.lower(*shard(mesh, za, zb, mine_a, mine_b)).compile().as_text()
  assert f"f32[{n // 8},{n}]" in hlo  # a device's block of logits
  assert f"f32[{n},{d}]" in hlo  # the gathered embeddings
  assert f"[{n},{n}]" not in hlo  # never the global matrix


# --------------------------------------------------------------------- errors


def test_bad_shapes_and_settings_are_rejected():
  mesh = jax.make_mesh((8, 1), AXES)
  za, zb, mine_a, mine_b = cmkm_batch(seed=100, n=16)
  with pytest.raises(ValueError, match="za and zb"):
    ssl_losses.cmkm_loss(za, zb[:12], mine_a, mine_b, T, mesh)
  with pytest.raises(ValueError, match="mine_b"):
    ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b[:8], T)
  with pytest.raises(ValueError, match="k"):
    ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b, T, k=16)
  with pytest.raises(ValueError, match="intra_negative_weight"):
    ssl_losses.dense_cmkm_loss(za, zb, mine_a, mine_b, T, intra_negative_weight=-1.0)
  with pytest.raises(ValueError, match="divisible"):
    ssl_losses.cmkm_loss(za[:12], zb[:12], mine_a[:12], mine_b[:12], T, mesh)
  with pytest.raises(ValueError, match="divisible"):
    ssl_losses.ntxent_loss(za[:12], zb[:12], T, mesh)
  with pytest.raises(ValueError, match="z1 and z2"):
    ssl_losses.ntxent_loss(za, zb[:, :4], T, mesh)
  with pytest.raises(ValueError, match="temperature"):
    ssl_losses.dense_ntxent_loss(za, zb, 0.0)
