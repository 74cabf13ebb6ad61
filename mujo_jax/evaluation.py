"""Validation metrics on the device mesh: retrieval recall@k and zero-shot accuracy.

The whole val split's embeddings ({modality: [N, D]}) stay sharded over the
mesh's batch axes; nothing is gathered to the host but the final hit counts.

Retrieval (`retrieval_metrics`): inside `jax.shard_map` each device all-gathers
the candidate modality to [N, D] and scores its own n_local = N / shards query
rows against it, `chunk_rows` queries at a time (memory chunk_rows x N per
device). A query's rank is the number of wrong candidates scoring >= its best
right one, so ties count against it, as in the host reference
`contrastive.retrieval_recall`. Per-k hit counts are `psum`-ed: every process
gets the same replicated result. Two notions of "right":
  - exact (`r{k}/...`): candidate j is right only for j == i (the paired example);
  - same caption (`r{k}_caption/...`, pairs with text): candidate j is right when
    its example's caption (token ids) equals the query example's. Captions repeat
    (a few phrasings per class), so exact retrieval punishes retrieving another
    example with the very same text; this does not.
Only examples with both modalities of a pair are queries and candidates.

Zero-shot (`zero_shot_metrics`): each non-text embedding is classified by the
nearest class-name text embedding (prompt: the class name, underscores as
spaces, which is how the demo's shortest captions read); accuracy over
labelled examples, and the macro mean over the classes present in the split.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mujo_jax import tokenizer as tokenizer_lib
from mujo_jax.modalities import INPUT_KEYS

BatchAxes = str | tuple[str, ...]

_HIGHEST = jax.lax.Precision.HIGHEST  # f32 scores on TPU/GPU too, as the host reference


def caption_ids(text_ids: jax.Array, has_text: jax.Array) -> jax.Array:
  """[N, L] token ids, [N] bool -> [N] int32 caption id: equal iff the rows are equal.

  Examples without text get -1. Runs on device (jit-able, any sharding).
  """
  n = text_ids.shape[0]
  _, inverse = jnp.unique(text_ids, axis=0, return_inverse=True, size=n,
                          fill_value=jnp.zeros((), text_ids.dtype))
  return jnp.where(has_text, inverse.reshape(n).astype(jnp.int32), -1)


def _match_ranks(queries, candidates, query_keys, candidate_keys, candidate_valid,
                 chunk_rows: int):
  """[n] per query: valid wrong candidates scoring >= its best valid right candidate.

  queries: [n, D]; candidates: [N, D]; a candidate j is right for query i iff
  candidate_keys[j] == query_keys[i]. Scores are computed `chunk_rows` queries at
  a time against all N candidates. A query without a valid right candidate gets
  the count of all valid wrong ones (a miss at any k below it).
  """
  n, dim = queries.shape
  chunk = max(1, min(chunk_rows, n))
  pad = -n % chunk
  q = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, dim)
  qk = jnp.pad(query_keys, (0, pad)).reshape(-1, chunk)

  def block(args):
    q, qk = args
    scores = jnp.dot(q, candidates.T, precision=_HIGHEST,
                     preferred_element_type=jnp.float32)  # [chunk, N]
    right = qk[:, None] == candidate_keys[None, :]
    best = jnp.max(jnp.where(right & candidate_valid, scores, -jnp.inf), axis=1)
    beaten = ~right & candidate_valid & (scores >= best[:, None])
    return jnp.sum(beaten, axis=1, dtype=jnp.int32)

  return jax.lax.map(block, (q, qk)).reshape(-1)[:n]


@functools.cache
def _recall_counts_fn(mesh, pairs, ks, batch_axes, chunk_rows, with_captions):
  """Jitted (embeddings, masks, text_ids) -> {(kind, a, b, direction): hits [len(ks)], ...}."""

  def local_counts(z, present, captions):
    n_local = next(iter(z.values())).shape[0]
    first_row = jax.lax.axis_index(batch_axes) * n_local
    z_all = {m: jax.lax.all_gather(v, batch_axes, tiled=True) for m, v in z.items()}
    present_all = {m: jax.lax.all_gather(v, batch_axes, tiled=True) for m, v in present.items()}
    num = next(iter(z_all.values())).shape[0]
    keys = {"exact": (first_row + jnp.arange(n_local), jnp.arange(num))}
    if with_captions:
      keys["caption"] = (captions, jax.lax.all_gather(captions, batch_axes, tiled=True))
    out = {}
    for a, b in pairs:
      valid, valid_all = present[a] & present[b], present_all[a] & present_all[b]
      out[("count", a, b, "")] = jax.lax.psum(jnp.sum(valid, dtype=jnp.int32), batch_axes)
      for kind, (query_keys, candidate_keys) in keys.items():
        if kind == "caption" and "text" not in (a, b):
          continue
        for direction, q, c in (("a_to_b", z[a], z_all[b]), ("b_to_a", z[b], z_all[a])):
          ranks = _match_ranks(q, c, query_keys, candidate_keys, valid_all, chunk_rows)
          hits = jnp.stack([jnp.sum(valid & (ranks < k), dtype=jnp.int32) for k in ks])
          out[(kind, a, b, direction)] = jax.lax.psum(hits, batch_axes)
    return out

  def counts(embeddings, masks, text_ids):
    z = {m: jnp.asarray(v, jnp.float32) for m, v in embeddings.items()}
    present = {m: jnp.asarray(v).astype(bool) for m, v in masks.items()}
    captions = (caption_ids(text_ids, present["text"]) if with_captions
                else jnp.zeros(next(iter(z.values())).shape[0], jnp.int32))
    spec = P(batch_axes)
    return jax.shard_map(local_counts, mesh=mesh, in_specs=(spec, spec, spec),
                         out_specs=P())(z, present, captions)

  return jax.jit(counts)


def retrieval_metrics(embeddings: Mapping[str, jax.Array], masks: Mapping[str, jax.Array],
                      pairs: Sequence[tuple[str, str]], mesh: jax.sharding.Mesh, *,
                      text_ids: jax.Array | None = None, ks: Sequence[int] = (1, 5),
                      batch_axes: BatchAxes = "data", chunk_rows: int = 512) -> dict[str, float]:
  """Cross-modal recall@k for every pair and direction, computed on the mesh.

  embeddings: {modality: [N, D]}, row i of each is example i, batch-sharded over
  `batch_axes` (the PartitionSpec entry of the batch axis: "data" or
  ("data", "fsdp")); N must divide by their size. masks: {modality: [N]} bool or
  0/1, whether example i has that modality (padding rows: all False).
  text_ids: [N, L] token ids; given, pairs with text also get same-caption
  recall (ids compared on device, see `caption_ids`). Returns, for pair (a, b) and each k:
  "r{k}/{a}_to_{b}", "r{k}/{b}_to_{a}" and their mean "r{k}/{a}_{b}", likewise
  "r{k}_caption/..."; pairs without a valid example are left out. Identical on
  every process.
  """
  pairs = tuple((a, b) for a, b in pairs)
  used = tuple(dict.fromkeys(m for pair in pairs for m in pair))
  missing = [m for m in used if m not in embeddings or m not in masks]
  if missing:
    raise ValueError(f"pairs {pairs} need embeddings and masks for {missing}; have "
                     f"embeddings {sorted(embeddings)}, masks {sorted(masks)}")
  with_captions = text_ids is not None and "text" in used
  num = embeddings[used[0]].shape[0]
  axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  if num % shards:
    raise ValueError(f"{num} val rows are not divisible by the {shards} shards of mesh "
                     f"axes {batch_axes!r}")
  fn = _recall_counts_fn(mesh, pairs, tuple(ks), axes[0] if len(axes) == 1 else axes,
                         chunk_rows, with_captions)
  counts = jax.device_get(fn({m: embeddings[m] for m in used}, {m: masks[m] for m in used},
                             text_ids if with_captions else None))
  metrics = {}
  for a, b in pairs:
    count = int(counts[("count", a, b, "")])
    if not count:
      continue
    for kind, suffix in (("exact", ""), ("caption", "_caption")):
      if (kind, a, b, "a_to_b") not in counts:
        continue
      ab = counts[(kind, a, b, "a_to_b")] / count
      ba = counts[(kind, a, b, "b_to_a")] / count
      for i, k in enumerate(ks):
        metrics[f"r{k}{suffix}/{a}_{b}"] = float(ab[i] + ba[i]) / 2
        metrics[f"r{k}{suffix}/{a}_to_{b}"] = float(ab[i])
        metrics[f"r{k}{suffix}/{b}_to_{a}"] = float(ba[i])
  return metrics


@functools.cache
def _concatenate_fn(sharding):
  return jax.jit(lambda batches: jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches),
                 out_shardings=sharding)


def concatenate(batches: Sequence[dict], sharding: NamedSharding) -> dict:
  """Per-batch pytrees of batch-sharded [B, ...] arrays -> one pytree of [N, ...], on device."""
  return _concatenate_fn(sharding)(list(batches))


# -- zero-shot classification ------------------------------------------------------------------

def zero_shot_skip_reason(tokenizer: str, class_names: Sequence[str],
                          modalities: Sequence[str]) -> str | None:
  """Why zero-shot accuracy cannot be scored for this dataset and model (None: it can)."""
  if "text" not in modalities:
    return "the model has no text tower"
  if not [m for m in modalities if m != "text"]:
    return "the model has no non-text tower"
  if not class_names:
    return "the dataset has no class names"
  if tokenizer != tokenizer_lib.TOKENIZER_NAME:
    return (f"the dataset's tokenizer is {tokenizer!r}, and only "
            f"{tokenizer_lib.TOKENIZER_NAME!r} is available to tokenise class names")
  return None


def pad_batch(batch, size: int):
  """`batch` (a dict of arrays [n, ...], or one array) with rows appended up to `size`.

  Fixed-size batches compile once whatever the split's length. Padding rows are zeros,
  and -1 under "label" (unlabelled), so with an all-zero modality_mask no metric counts
  them.
  """
  if not isinstance(batch, Mapping):
    return _pad_rows(np.asarray(batch), size, 0)
  return {k: _pad_rows(np.asarray(v), size, -1 if k == "label" else 0) for k, v in batch.items()}


def _pad_rows(x: np.ndarray, size: int, fill) -> np.ndarray:
  if len(x) > size:
    raise ValueError(f"{len(x)} rows do not fit a batch of {size}")
  return np.concatenate([x, np.full((size - len(x),) + x.shape[1:], fill, x.dtype)])


def class_prompts(class_names: Sequence[str]) -> list[str]:
  """One prompt per class: its name with underscores as spaces ("biceps curls")."""
  return [name.replace("_", " ") for name in class_names]


@functools.cache
def class_prompt_ids(class_names: tuple[str, ...], text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids [C, text_len] int32, lengths [C]) of the class prompts, tokenised once per process."""
  return tokenizer_lib.tokenize(tokenizer_lib.load_tokenizer(), class_prompts(class_names),
                                text_len)


def prompt_batches(ids: np.ndarray, lengths: np.ndarray, template: Mapping[str, np.ndarray],
                   process_index: int, process_count: int) -> list[dict[str, np.ndarray]]:
  """Class prompts laid out as this process's parts of val-shaped global batches.

  template: one process's model-input batch (its rows decide the per-process size);
  global row r of the stream holds prompt r (rows past the last prompt keep the
  template's). So the compiled val embedding embeds the prompts, and row c of the
  concatenated "text" embeddings is class c's.
  """
  text = INPUT_KEYS["text"]
  per_process = len(template[text])
  global_batch = per_process * process_count
  batches = []
  for start in range(0, len(ids), global_batch):
    local = {k: np.array(v) for k, v in template.items()}
    first = start + process_index * per_process
    mine = slice(first, min(first + per_process, len(ids)))
    rows = mine.stop - mine.start
    if rows > 0:
      local[text][:rows] = ids[mine]
      local["text_len"][:rows] = lengths[mine]
    batches.append(local)
  return batches


@functools.cache
def _zero_shot_counts_fn(mesh, num_classes: int):

  def counts(embeddings, masks, labels, class_embeddings):
    labels = labels.astype(jnp.int32)
    classes = jnp.asarray(class_embeddings, jnp.float32)
    out = {}
    for m, z in embeddings.items():
      scores = jnp.dot(jnp.asarray(z, jnp.float32), classes.T, precision=_HIGHEST)  # [N, C]
      correct = jnp.argmax(scores, axis=1) == labels
      scored = jnp.asarray(masks[m]).astype(bool) & (labels >= 0) & (labels < num_classes)
      per_class = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * scored[:, None]
      out[m] = (jnp.sum(per_class * correct[:, None], axis=0), jnp.sum(per_class, axis=0))
    return out

  return jax.jit(counts, out_shardings=NamedSharding(mesh, P()))


def zero_shot_metrics(embeddings: Mapping[str, jax.Array], masks: Mapping[str, jax.Array],
                      labels: jax.Array, class_embeddings: jax.Array, class_names: Sequence[str],
                      mesh: jax.sharding.Mesh) -> tuple[dict[str, float], dict[str, list[str]]]:
  """Nearest-class-text accuracy of each modality's embeddings, computed on the mesh.

  embeddings: {modality: [N, D]} (non-text modalities), batch-sharded; masks:
  {modality: [N]}; labels: [N] int, -1 = unlabelled (not scored);
  class_embeddings: [C, D], row c = class c's prompt. Returns (metrics, absent):
  metrics "zero_shot/{m}_acc" (over scored examples), "zero_shot/{m}_macro_acc"
  (mean of per-class accuracy over the classes with a scored example),
  "zero_shot/{m}_count" (examples scored), modalities with none left out; absent:
  {m: class names with no scored example}, which the macro mean leaves out.
  """
  num_classes = len(class_names)
  if class_embeddings.shape[0] != num_classes:
    raise ValueError(f"{class_embeddings.shape[0]} class embeddings for {num_classes} classes")
  counts = jax.device_get(_zero_shot_counts_fn(mesh, num_classes)(
      dict(embeddings), {m: masks[m] for m in embeddings}, labels, class_embeddings))
  metrics, absent = {}, {}
  for m, (hits, scored) in counts.items():
    if not scored.sum():
      continue
    present = scored > 0
    metrics[f"zero_shot/{m}_acc"] = float(hits.sum() / scored.sum())
    metrics[f"zero_shot/{m}_macro_acc"] = float(np.mean(hits[present] / scored[present]))
    metrics[f"zero_shot/{m}_count"] = float(scored.sum())
    absent[m] = [name for name, p in zip(class_names, present) if not p]
  return metrics, absent
