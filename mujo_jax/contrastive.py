"""Global contrastive (InfoNCE) loss across modality pairs, data-parallel.

MuJo pretrains IMU, pose, video and text towers into one feature space with a
CLIP-style symmetric InfoNCE loss per modality pair. The negatives of a row are
all examples of the *global* batch, so the loss must see every device's
embeddings; but the full [N, N] logits matrix is never needed in one place.

Sharded scheme (`contrastive_loss`): inside `jax.shard_map` over the mesh's data
axis each device holds n_local = N / num_shards rows of every modality. It
all-gathers each modality's embeddings and masks to [N, D] / [N] once, then per
pair and direction computes only its own [n_local, N] logits block, whose
targets are the global columns `axis_index * n_local + i`. Per-row loss sums and
valid-row counts are `psum`-ed, so the result is exactly the global mean that a
single device computing the full matrix gets (`dense_contrastive_loss`). The
transpose of `all_gather` under shard_map is a reduce-scatter, so gradients that
flow through other devices' negatives come back to the device that owns them.

Chunked scheme (`chunk_size > 0`): the [n_local, N] block itself grows with the
global batch, so each device can instead walk the gathered columns in chunks of
`chunk_size` with an online log-sum-exp (running max and sum, `jax.lax.scan`),
and `jax.checkpoint` on the chunk body makes the backward pass recompute each
chunk's logits instead of storing them: the loss then holds [n_local, chunk]
logits at a time. N need not be a multiple of the chunk (the last chunk is
padded with masked columns). The positive logit is the row's own column.

Data can be modal-incomplete: a pair (a, b) uses only examples that have both.
Rows of other examples are left out of the mean and their columns are masked
out of every softmax. A pair with no valid example contributes 0, not NaN.

Also here: the multitask pair-selection strategies of the paper
(`pairs_for_step`, host side) and cross-modal retrieval recall@k on the host
(`retrieval_recall`, numpy): the reference that evaluation.py's on-mesh recall is
tested against.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mujo_jax.modalities import MODALITIES

STRATEGIES = ("all_pairs", "random_pair", "round_robin", "imu_anchored")

# Logit given to masked-out columns: far below any real logit (|scale * cos| <=
# the scale cap, ~100) yet finite, so a row whose columns are all masked gives a
# finite logsumexp instead of -inf - -inf = NaN (whose gradient would poison the
# `where` that drops that row).
_MASKED_LOGIT = -1e9


def pair_name(a: str, b: str) -> str:
  return f"{a}_{b}"


def _row_loss_sum(rows, cols, valid_rows, valid_cols, logit_scale, first_row):
  """Sum over valid rows of cross-entropy(row i's logits over columns, target column).

  rows: [n, D] queries; cols: [N, D] candidates; valid_rows: [n] bool;
  valid_cols: [N] bool; row i's target is column `first_row + i` (first_row may
  be traced: the device's offset into the global batch). Returns a f32 scalar.
  The logits and logsumexp are float32 whatever the inputs' dtype: with scales
  near 100 a bfloat16 logsumexp is off by whole nats.
  """
  n = rows.shape[0]
  logits = logit_scale * jnp.dot(rows, cols.T, preferred_element_type=jnp.float32)  # [n, N]
  logits = jnp.where(valid_cols[None, :], logits, _MASKED_LOGIT)
  own_block = jax.lax.dynamic_slice_in_dim(logits, first_row, n, axis=1)  # [n, n]
  positive = jnp.diagonal(own_block)  # [n]
  row_loss = jax.nn.logsumexp(logits, axis=1) - positive
  return jnp.sum(jnp.where(valid_rows, row_loss, 0.0))


def _chunked_row_loss_sum(rows, cols, valid_rows, valid_cols, logit_scale, first_row,
                          chunk_size):
  """`_row_loss_sum` scoring `chunk_size` columns at a time (online log-sum-exp).

  Same arguments and result; memory is [n, chunk_size] logits instead of [n, N],
  in the forward and (through the rematerialised chunk body) the backward pass.
  """
  n, dim = rows.shape
  num_cols = cols.shape[0]
  num_chunks = -(-num_cols // chunk_size)
  pad = num_chunks * chunk_size - num_cols
  # Padding columns are masked like absent examples: they add exp(-1e9 - max) = 0.
  col_chunks = jnp.pad(cols, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, dim)
  valid_chunks = jnp.pad(valid_cols, (0, pad)).reshape(num_chunks, chunk_size)

  @jax.checkpoint
  def add_chunk(carry, chunk):
    running_max, running_sum = carry  # [n], [n]
    cols_c, valid_c = chunk  # [chunk, D], [chunk]
    logits = logit_scale * jnp.dot(rows, cols_c.T, preferred_element_type=jnp.float32)
    logits = jnp.where(valid_c[None, :], logits, _MASKED_LOGIT)  # [n, chunk]
    # The max only keeps exp() in range; it cancels in the value, so no gradient
    # flows through it and the gradient is exactly the softmax.
    new_max = jax.lax.stop_gradient(jnp.maximum(running_max, jnp.max(logits, axis=1)))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
    return (new_max, running_sum), None

  own_cols = jax.lax.dynamic_slice_in_dim(cols, first_row, n, axis=0)  # [n, D]
  own_valid = jax.lax.dynamic_slice_in_dim(valid_cols, first_row, n, axis=0)
  positive = logit_scale * jnp.sum(rows.astype(jnp.float32) * own_cols, axis=1)
  positive = jnp.where(own_valid, positive, _MASKED_LOGIT)  # [n]
  # `*_like(positive)`: under shard_map the carry must vary over the same mesh
  # axes as the body's result.
  init = (jnp.full_like(positive, -jnp.inf), jnp.zeros_like(positive))
  (row_max, row_sum), _ = jax.lax.scan(add_chunk, init, (col_chunks, valid_chunks))
  row_loss = row_max + jnp.log(row_sum) - positive
  return jnp.sum(jnp.where(valid_rows, row_loss, 0.0))


def pairwise_infonce(za, zb, valid=None, logit_scale=1.0):
  """Dense single-device symmetric InfoNCE sums for one pair (the reference).

  za, zb: [N, D] L2-normalised embeddings, row i of za matches row i of zb.
  valid: [N] bool/0-1 (None = all), examples that have both modalities.
  Returns (loss_sum_ab, loss_sum_ba, count): summed per-row cross-entropies for
  a->b and b->a and the number of valid rows, so callers can average or combine
  across batches; the pair loss is 0.5 * (ab + ba) / max(count, 1).
  """
  za = jnp.asarray(za, jnp.float32)
  zb = jnp.asarray(zb, jnp.float32)
  valid = (jnp.ones(za.shape[0], bool) if valid is None else jnp.asarray(valid).astype(bool))
  scale = jnp.asarray(logit_scale, jnp.float32)
  loss_ab = _row_loss_sum(za, zb, valid, valid, scale, 0)
  loss_ba = _row_loss_sum(zb, za, valid, valid, scale, 0)
  return loss_ab, loss_ba, jnp.sum(valid, dtype=jnp.float32)


def _pair_loss(loss_sum_ab, loss_sum_ba, count):
  """Mean of the two directions; 0 when the pair has no valid example."""
  return 0.5 * (loss_sum_ab + loss_sum_ba) / jnp.maximum(count, 1.0)


def _check_pairs(embeddings, masks, pairs):
  pairs = tuple((a, b) for a, b in pairs)
  if not pairs:
    raise ValueError("contrastive loss needs at least one modality pair")
  for a, b in pairs:
    for m in (a, b):
      if m not in embeddings or m not in masks:
        raise ValueError(f"pair {pair_name(a, b)} needs embeddings and a mask for {m!r}; "
                         f"have embeddings {sorted(embeddings)}, masks {sorted(masks)}")
  used = tuple(dict.fromkeys(m for pair in pairs for m in pair))
  return pairs, used


def dense_contrastive_loss(embeddings: Mapping[str, jax.Array], masks: Mapping[str, jax.Array],
                           pairs: Sequence[tuple[str, str]], logit_scale):
  """`contrastive_loss` on one device with full [N, N] logits (tests, small evals)."""
  pairs, _ = _check_pairs(embeddings, masks, pairs)
  per_pair = {}
  for a, b in pairs:
    valid = jnp.asarray(masks[a]).astype(bool) & jnp.asarray(masks[b]).astype(bool)
    per_pair[pair_name(a, b)] = _pair_loss(
        *pairwise_infonce(embeddings[a], embeddings[b], valid, logit_scale))
  return sum(per_pair.values()), per_pair


def contrastive_loss(embeddings: Mapping[str, jax.Array], masks: Mapping[str, jax.Array],
                     pairs: Sequence[tuple[str, str]], logit_scale, mesh: jax.sharding.Mesh,
                     data_axis: str | tuple[str, ...] = "data", chunk_size: int = 0,
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Global symmetric InfoNCE summed over `pairs`, sharded over `data_axis`.

  embeddings: {modality: [N, D]} L2-normalised, batch-sharded over `data_axis`
  (one mesh axis or a tuple of them, e.g. ("data", "fsdp"), major to minor).
  masks: {modality: [N]} bool or 0/1, whether each example has that modality.
  pairs: static modality pairs; logit_scale: scalar (already exp'd).
  chunk_size: 0 scores each device's [n_local, N] block at once; > 0 walks the
  columns in chunks of that many (any N; see the module docstring).
  Returns (total, {"a_b": loss}) where total is the sum of the per-pair losses
  ("all pairs summed"); every value equals `dense_contrastive_loss` on the
  gathered batch. N must be divisible by the number of shards of `data_axis`;
  other mesh axes see replicated inputs and compute the same value.
  """
  pairs, used = _check_pairs(embeddings, masks, pairs)
  axes = (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
  num_shards = math.prod(mesh.shape[a] for a in axes)
  batch = embeddings[used[0]].shape[0]
  if batch % num_shards:
    raise ValueError(f"global batch {batch} is not divisible by the {num_shards} "
                     f"shards of mesh axes {axes}")
  if chunk_size < 0:
    raise ValueError(f"loss chunk_size must be >= 0 (0: unchunked), got {chunk_size}")
  if chunk_size:
    row_loss_sum = functools.partial(_chunked_row_loss_sum, chunk_size=min(chunk_size, batch))
  else:
    row_loss_sum = _row_loss_sum
  z = {m: jnp.asarray(embeddings[m], jnp.float32) for m in used}
  present = {m: jnp.asarray(masks[m]).astype(bool) for m in used}
  scale = jnp.asarray(logit_scale, jnp.float32)

  def local_sums(z, present, scale):
    # z[m]: [n_local, D]; present[m]: [n_local]; scale: [] (replicated).
    n_local = z[used[0]].shape[0]
    first_row = jax.lax.axis_index(axes) * n_local
    # One gather per modality, shared by every pair that uses it.
    z_all = {m: jax.lax.all_gather(z[m], axes, tiled=True) for m in used}  # [N, D]
    present_all = {m: jax.lax.all_gather(present[m], axes, tiled=True) for m in used}
    sums = {}
    for a, b in pairs:
      valid = present[a] & present[b]  # [n_local]
      valid_all = present_all[a] & present_all[b]  # [N]
      loss_ab = row_loss_sum(z[a], z_all[b], valid, valid_all, scale, first_row)
      loss_ba = row_loss_sum(z[b], z_all[a], valid, valid_all, scale, first_row)
      count = jnp.sum(valid, dtype=jnp.float32)
      sums[pair_name(a, b)] = jax.lax.psum(jnp.stack([loss_ab, loss_ba, count]), axes)
    return sums

  sums = jax.shard_map(local_sums, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                       out_specs=P())(z, present, scale)
  per_pair = {name: _pair_loss(*s) for name, s in sums.items()}
  return sum(per_pair.values()), per_pair


def _canonical(modalities: Sequence[str]) -> tuple[str, ...]:
  unknown = set(modalities) - set(MODALITIES)
  if unknown:
    raise ValueError(f"unknown modalities {sorted(unknown)}; known: {MODALITIES}")
  return tuple(m for m in MODALITIES if m in modalities)


def all_pairs(modalities: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """Every pair of the enabled modalities, in canonical order (imu_pose, ..., video_text)."""
  return tuple(itertools.combinations(_canonical(modalities), 2))


def _strategy_candidates(strategy: str, modalities: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """The pairs a strategy draws from (random_pair, round_robin) or sums (the others)."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown multitask strategy {strategy!r}; known: {STRATEGIES}")
  candidates = all_pairs(modalities)
  if strategy == "imu_anchored":
    if "imu" not in modalities:
      raise ValueError(f"strategy 'imu_anchored' needs the imu modality; enabled: "
                       f"{tuple(modalities)}")
    candidates = tuple(p for p in candidates if "imu" in p)
  if not candidates:
    raise ValueError(f"strategy {strategy!r} needs at least two modalities; enabled: "
                     f"{tuple(modalities)}")
  return candidates


def pairs_for_step(strategy: str, modalities: Sequence[str], step: int,
                   seed: int = 0) -> tuple[tuple[str, str], ...]:
  """The modality pairs whose losses a training step sums (host side, static per step).

  The trainer compiles one step per distinct result (`step_pair_sets`), so only
  the towers that the returned pairs use run. Strategies (MuJo's multitask variants):
    all_pairs     every pair of enabled modalities, summed (default);
    random_pair   one pair per step, uniform, deterministic in (seed, step);
    round_robin   pair number step % n_pairs, cycling in canonical order;
    imu_anchored  the pairs that contain "imu", summed.
  """
  candidates = _strategy_candidates(strategy, modalities)
  if strategy == "random_pair":
    rng = np.random.default_rng([seed, step])
    return (candidates[int(rng.integers(len(candidates)))],)
  if strategy == "round_robin":
    return (candidates[step % len(candidates)],)
  return candidates


def step_pair_sets(strategy: str,
                   modalities: Sequence[str]) -> tuple[tuple[tuple[str, str], ...], ...]:
  """Every distinct result `pairs_for_step` can give for this strategy, whatever the step.

  The trainer compiles one step for each before the first step, so that no
  compilation stalls the loop later (random_pair may first draw a pair late).
  """
  candidates = _strategy_candidates(strategy, modalities)
  if strategy in ("random_pair", "round_robin"):
    return tuple((pair,) for pair in candidates)
  return (candidates,)


def retrieval_recall(za, zb, ks: Sequence[int] = (1, 5), valid=None,
                     chunk_rows: int = 2048) -> dict[str, float]:
  """Cross-modal retrieval recall@k in both directions over a whole split (host side).

  za, zb: [N, D] embeddings (normalised or not: ranking uses the dot product,
  as the loss does); row i of za matches row i of zb. valid: [N] bool (None =
  all): only valid rows are queries and only valid rows are candidates.
  A query's rank counts the other candidates scoring >= its match, so ties
  (e.g. collapsed embeddings) count against it. Similarities are computed in
  blocks of `chunk_rows` queries, so memory is chunk_rows x N_valid.
  Returns {"recall@k_a_to_b": r, "recall@k_b_to_a": r} for each k; NaN when
  there is no valid row.
  """
  za = np.asarray(za, np.float32)
  zb = np.asarray(zb, np.float32)
  if za.shape != zb.shape or za.ndim != 2:
    raise ValueError(f"expected two [N, D] arrays of one shape, got {za.shape} and {zb.shape}")
  if valid is not None:
    keep = np.asarray(valid).astype(bool)
    za, zb = za[keep], zb[keep]
  result = {}
  for direction, queries, candidates in (("a_to_b", za, zb), ("b_to_a", zb, za)):
    ranks = _match_ranks(queries, candidates, chunk_rows)
    for k in ks:
      result[f"recall@{k}_{direction}"] = float(np.mean(ranks < k)) if len(ranks) else float("nan")
  return result


def _match_ranks(queries, candidates, chunk_rows):
  """[n] number of candidates j != i with score(i, j) >= score(i, i)."""
  n = len(queries)
  ranks = np.empty(n, np.int64)
  for start in range(0, n, chunk_rows):
    stop = min(start + chunk_rows, n)
    scores = queries[start:stop] @ candidates.T  # [chunk, n]
    rows = np.arange(stop - start)
    matched = scores[rows, start + rows]
    ranks[start:stop] = np.sum(scores >= matched[:, None], axis=1) - 1
  return ranks
