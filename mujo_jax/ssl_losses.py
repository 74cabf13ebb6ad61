"""SimCLR (NT-Xent) and CMC-CMKM contrastive losses, data-parallel, with dense references.

The baselines and the method of CMC-CMKM (Brinzea et al., IJCNN 2022) on UTD-MHAD:

* SimCLR (`ntxent_loss`): one modality, two augmented views z1[i], z2[i] of each
  example. Each of the 2N views is an anchor whose positive is its other view
  and whose candidates are all 2N views but itself; the loss is the mean over
  the 2N anchors of the cross-entropy with logits cos / T. This is the
  reference's NTXent (models/simclr_um.py) with two views.
* CMC needs nothing new: it is `contrastive.contrastive_loss` for the one pair
  (inertial, skeleton) with a fixed `logit_scale = 1 / T` (the reference's
  MM_NTXent, models/cmc.py: cross-entropy over the 2N rows of both directions).
* CMC-CMKM (`cmkm_loss`): CMC plus cross-modal knowledge mining, the training
  loss of the reference's MM_NTXent_CVKM (models/cmc_cvkm.py) with positive
  mining (top-k) and intra-modal negatives on, no negative-set pruning and no
  loss-term weighting (the paper's setting). Its validation loss is plain CMC.

CMKM, for anchor i of modality a (anchors of b: swap a and b everywhere), with
s_ab = za @ zb.T, s_aa = za @ za.T and P_a(i) / P_b(i) the k samples j != i
whose frozen single-modality features (`mine_a` / `mine_b`) are most similar to
sample i's:

  num_i = exp(s_ab[i,i]/T) + sum_{j in P_b(i)} exp(s_ab[i,j]/T)
          + sum_{j in P_a(i)} exp(s_aa[i,j]/Ti)
  den_i = sum_{j not in {i} u P_b(i)} exp(s_ab[i,j]/T)
          + lambda sum_{j != i, j not in P_a(i)} exp(s_aa[i,j]/Ti)
  loss_i = -log(num_i / (num_i + den_i)),  loss = mean over the 2N anchors.

So the cross-modal positives are mined with the *other* modality's features and
the intra-modal ones with the anchor's own. Ti (`intra_temperature`) defaults to
1: the reference exponentiates the intra-modal cosine similarities without
dividing them by the temperature, and the default reproduces that. Two
deliberate differences from the reference:
* The mined set never contains the anchor: we mask its own column to -inf
  before top-k. The reference subtracts 1 from the diagonal instead, so when
  every other sample has negative similarity (or k exceeds the positives) it
  can pick the anchor itself.
* Everything is computed in log space (logsumexp over log-weighted logits,
  float32) rather than as ratios of exp sums; weight-0 terms (lambda = 0, the
  anchor's own intra column) are dropped exactly with -inf logits, so they give
  no log(0) and no NaN gradient.

Sharded scheme (as in contrastive.py): inside `jax.shard_map` over `data_axis`
each device holds n_local = N / num_shards rows of every input. It all-gathers
them to [N, ...], computes only its own rows' [n_local, N] blocks (its rows are
global rows `axis_index * n_local + r`), mines its rows' top-k against all N
columns with `jax.lax.top_k`, and `psum`s the per-row loss sums. The result is
the dense one (`dense_*`, the same row code on one device) up to float rounding.
Gradients through other devices' columns return via all_gather's transpose.
The mining features get no gradient (`stop_gradient`): their encoders are frozen.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _axes(data_axis) -> tuple[str, ...]:
  return (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)


def _check_divisible(batch: int, mesh: jax.sharding.Mesh, axes: tuple[str, ...]) -> None:
  num_shards = math.prod(mesh.shape[a] for a in axes)
  if batch % num_shards:
    raise ValueError(f"global batch {batch} is not divisible by the {num_shards} "
                     f"shards of mesh axes {axes}")


def _check_pair(name_1, z1, name_2, z2):
  """Both [N, D] with one shape; returns N."""
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f"{name_1} and {name_2} must be two [N, D] arrays of one shape, "
                     f"got {z1.shape} and {z2.shape}")
  return z1.shape[0]


def _check_positive(name, value):
  """Rejects a non-positive value when it is a concrete Python number (traced ones pass)."""
  if isinstance(value, numbers.Real) and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}")


def _own_columns(n: int, num_cols: int, first_row) -> jax.Array:
  """[n, num_cols] bool: row r's own column, global index `first_row + r` (may be traced)."""
  return jnp.arange(num_cols)[None, :] == (first_row + jnp.arange(n))[:, None]


def _logits(rows, cols, inv_temperature):
  """[n, N] float32 (rows . cols) * inv_temperature, whatever the inputs' dtype."""
  return inv_temperature * jnp.dot(rows, cols.T, preferred_element_type=jnp.float32)


# ------------------------------------------------------------------- NT-Xent


def _ntxent_row_loss_sum(rows, same_view, other_view, first_row, inv_temperature):
  """Sum of NT-Xent cross-entropies of one view's anchors.

  rows: [n, D] anchors (global rows first_row..first_row+n-1 of their view);
  same_view, other_view: [N, D] all views of the anchor's and the other view.
  An anchor's positive is its own column of `other_view`; its own column of
  `same_view` (the anchor itself) is left out.
  """
  own = _own_columns(rows.shape[0], same_view.shape[0], first_row)
  cross = _logits(rows, other_view, inv_temperature)  # [n, N]
  same = jnp.where(own, -jnp.inf, _logits(rows, same_view, inv_temperature))  # [n, N]
  positive = jnp.sum(jnp.where(own, cross, 0.0), axis=1)  # [n]
  row_loss = jax.nn.logsumexp(jnp.concatenate([cross, same], axis=1), axis=1) - positive
  return jnp.sum(row_loss)


def dense_ntxent_loss(z1, z2, temperature) -> jax.Array:
  """`ntxent_loss` on one device with full [N, N] blocks (the reference for tests)."""
  z1 = jnp.asarray(z1, jnp.float32)
  z2 = jnp.asarray(z2, jnp.float32)
  batch = _check_pair("z1", z1, "z2", z2)
  _check_positive("temperature", temperature)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  total = (_ntxent_row_loss_sum(z1, z1, z2, 0, inv_t)
           + _ntxent_row_loss_sum(z2, z2, z1, 0, inv_t))
  return total / (2 * batch)


def ntxent_loss(z1, z2, temperature, mesh: jax.sharding.Mesh,
                data_axis: str | tuple[str, ...] = ("data", "fsdp")) -> jax.Array:
  """SimCLR's NT-Xent loss of two views, sharded over `data_axis`.

  z1, z2: [N, D] L2-normalised embeddings of two augmentations of the same N
  examples, batch-sharded over `data_axis` (a mesh axis or a tuple of them,
  major to minor). temperature: scalar T (logits are cos / T). Returns the
  scalar mean over the 2N anchors; equals `dense_ntxent_loss`. N must be
  divisible by the number of shards of `data_axis`.
  """
  z1 = jnp.asarray(z1, jnp.float32)
  z2 = jnp.asarray(z2, jnp.float32)
  batch = _check_pair("z1", z1, "z2", z2)
  _check_positive("temperature", temperature)
  axes = _axes(data_axis)
  _check_divisible(batch, mesh, axes)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)

  def local_sum(z1, z2, inv_t):
    # z1, z2: [n_local, D]; inv_t: [] (replicated).
    first_row = jax.lax.axis_index(axes) * z1.shape[0]
    z1_all = jax.lax.all_gather(z1, axes, tiled=True)  # [N, D]
    z2_all = jax.lax.all_gather(z2, axes, tiled=True)
    total = (_ntxent_row_loss_sum(z1, z1_all, z2_all, first_row, inv_t)
             + _ntxent_row_loss_sum(z2, z2_all, z1_all, first_row, inv_t))
    return jax.lax.psum(total, axes)

  total = jax.shard_map(local_sum, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                        out_specs=P())(z1, z2, inv_t)
  return total / (2 * batch)


# ---------------------------------------------------------------------- CMKM


def _mined(features, all_features, own, k):
  """[n, N] bool: each row's k most similar columns other than its own.

  features: [n, F] rows' mining features; all_features: [N, F]; own: [n, N]
  the rows' own columns, excluded (-inf) before top-k so a duplicate of the
  anchor can be mined but never the anchor itself. HIGHEST precision: the
  selection is discrete, so it should not depend on a reduced-precision matmul.
  """
  if k == 0:
    return jnp.zeros_like(own)
  sims = jnp.dot(features, all_features.T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)
  _, top = jax.lax.top_k(jnp.where(own, -jnp.inf, sims), k)  # [n, k]
  return jnp.any(top[:, :, None] == jnp.arange(own.shape[1])[None, None, :], axis=1)


def _cmkm_row_loss_sum(x, y_all, x_all, mine_x, mine_x_all, mine_y, mine_y_all, first_row,
                       inv_t, inv_ti, log_lambda, k):
  """Sum of CMKM losses of modality x's anchors (global rows first_row..first_row+n-1).

  x: [n, D] anchors; y_all, x_all: [N, D] all embeddings of the other and the
  anchor's modality; mine_*: [n, F] / [N, F] frozen mining features. The cross
  positives are mined with the other modality's features (P_y), the intra ones
  with the anchor's (P_x). log_lambda: log of the intra-negative weight, -inf
  for weight 0.
  """
  own = _own_columns(x.shape[0], x_all.shape[0], first_row)  # [n, N]
  cross_pos = own | _mined(mine_y, mine_y_all, own, k)
  intra_pos = _mined(mine_x, mine_x_all, own, k)
  cross = _logits(x, y_all, inv_t)  # [n, N]
  intra = _logits(x, x_all, inv_ti)  # [n, N]
  numerator = jnp.concatenate([jnp.where(cross_pos, cross, -jnp.inf),
                               jnp.where(intra_pos, intra, -jnp.inf)], axis=1)
  intra_neg = jnp.where(own, -jnp.inf, intra + log_lambda)  # weight lambda; own column: 0
  everything = jnp.concatenate([cross, jnp.where(intra_pos, intra, intra_neg)], axis=1)
  row_loss = (jax.nn.logsumexp(everything, axis=1)
              - jax.nn.logsumexp(numerator, axis=1))
  return jnp.sum(row_loss)


def _cmkm_inputs(za, zb, mine_a, mine_b, temperature, k, intra_negative_weight,
                 intra_temperature):
  """Checks shapes and settings; returns float32 arrays, N and the scalar parameters."""
  za = jnp.asarray(za, jnp.float32)
  zb = jnp.asarray(zb, jnp.float32)
  batch = _check_pair("za", za, "zb", zb)
  mine_a = jax.lax.stop_gradient(jnp.asarray(mine_a, jnp.float32))
  mine_b = jax.lax.stop_gradient(jnp.asarray(mine_b, jnp.float32))
  for name, mine in (("mine_a", mine_a), ("mine_b", mine_b)):
    if mine.ndim != 2 or mine.shape[0] != batch:
      raise ValueError(f"{name} must be [N, F] with N = {batch} (the rows of za and zb), "
                       f"got {mine.shape}")
  if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 0 <= k < batch:
    raise ValueError(f"positive mining k must be an int with 0 <= k < N = {batch} "
                     f"(k samples other than the anchor), got {k!r}")
  _check_positive("temperature", temperature)
  _check_positive("intra_temperature", intra_temperature)
  if isinstance(intra_negative_weight, numbers.Real) and intra_negative_weight < 0:
    raise ValueError(f"intra_negative_weight must be >= 0, got {intra_negative_weight}")
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  inv_ti = 1.0 / jnp.asarray(intra_temperature, jnp.float32)
  weight = jnp.asarray(intra_negative_weight, jnp.float32)
  # log(weight) with weight 0 -> -inf, without a log(0) in the graph.
  log_lambda = jnp.where(weight > 0, jnp.log(jnp.where(weight > 0, weight, 1.0)), -jnp.inf)
  return za, zb, mine_a, mine_b, batch, int(k), (inv_t, inv_ti, log_lambda)


def dense_cmkm_loss(za, zb, mine_a, mine_b, temperature, *, k=1, intra_negative_weight=1.0,
                    intra_temperature=1.0) -> jax.Array:
  """`cmkm_loss` on one device with full [N, N] blocks (the reference for tests)."""
  za, zb, mine_a, mine_b, batch, k, params = _cmkm_inputs(
      za, zb, mine_a, mine_b, temperature, k, intra_negative_weight, intra_temperature)
  total = (_cmkm_row_loss_sum(za, zb, za, mine_a, mine_a, mine_b, mine_b, 0, *params, k)
           + _cmkm_row_loss_sum(zb, za, zb, mine_b, mine_b, mine_a, mine_a, 0, *params, k))
  return total / (2 * batch)


def cmkm_loss(za, zb, mine_a, mine_b, temperature, mesh: jax.sharding.Mesh,
              data_axis: str | tuple[str, ...] = ("data", "fsdp"), *, k=1,
              intra_negative_weight=1.0, intra_temperature=1.0) -> jax.Array:
  """CMC-CMKM training loss of modalities a and b, sharded over `data_axis`.

  za, zb: [N, D] L2-normalised embeddings, row i of both from example i.
  mine_a, mine_b: [N, Fa] / [N, Fb] L2-normalised features of the frozen
  single-modality (SimCLR) encoders, used only to mine positives (no gradient).
  temperature: scalar T of the cross-modal logits. k: mined positives per anchor
  and kind (0 <= k < N; 0 = intra-modal negatives without mining).
  intra_negative_weight: lambda >= 0 on the intra-modal negatives (0 drops them
  exactly). intra_temperature: Ti of the intra-modal logits (1 = the reference).
  All inputs batch-sharded over `data_axis` (a mesh axis or a tuple of them);
  N divisible by its number of shards. Returns the scalar mean over the 2N
  anchors; equals `dense_cmkm_loss`. See the module docstring for the formula.
  """
  za, zb, mine_a, mine_b, batch, k, params = _cmkm_inputs(
      za, zb, mine_a, mine_b, temperature, k, intra_negative_weight, intra_temperature)
  axes = _axes(data_axis)
  _check_divisible(batch, mesh, axes)

  def local_sum(za, zb, mine_a, mine_b, params):
    # za, zb, mine_*: [n_local, ...]; params: scalars (replicated).
    first_row = jax.lax.axis_index(axes) * za.shape[0]
    za_all, zb_all, mine_a_all, mine_b_all = (
        jax.lax.all_gather(v, axes, tiled=True) for v in (za, zb, mine_a, mine_b))  # [N, ...]
    total = (_cmkm_row_loss_sum(za, zb_all, za_all, mine_a, mine_a_all, mine_b, mine_b_all,
                                first_row, *params, k)
             + _cmkm_row_loss_sum(zb, za_all, zb_all, mine_b, mine_b_all, mine_a, mine_a_all,
                                  first_row, *params, k))
    return jax.lax.psum(total, axes)

  total = jax.shard_map(local_sum, mesh=mesh, in_specs=(P(axes),) * 4 + (P(),),
                        out_specs=P())(za, zb, mine_a, mine_b, params)
  return total / (2 * batch)
