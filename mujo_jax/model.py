"""The MuJo encoder towers: IMU, pose, video and text into one joint space.

Every modality gets its own tower with the same shape: a tokenizer turns the raw
input into a token sequence `[B, N, width]`, a learned CLS token is prepended,
a pre-LayerNorm transformer encoder mixes the tokens, and the CLS output is
normalised, projected (no bias) to `embed_dim` and L2-normalised. The unit
vectors of all towers live in one space, so contrastive losses compare them with
a plain dot product (times the learned logit scale held by `MuJo`).

Tokenizers (the shapes are the defaults of `default_model_config`):
  imu    [B, 250, 6]      -> 25 patches of 10 samples  [B, 25, 60]  -> linear
  pose   [B, 125, 17, 3]  -> 25 patches of 5 frames    [B, 25, 255] -> linear
  video  [B, 8, 1536]     -> 8 tokens                               -> linear
  text   ids [B, 64]      -> drop the tokenizer's [CLS], embed 63 ids (table)

The text tower can instead be the pretrained all-MiniLM-L6-v2
(`config.towers.text.architecture = "minilm"`, `bert.py`): its BERT encoder
reads all 64 ids ([CLS] included), its sentence embedding (mean over the real
tokens, L2-normalised) is projected (no bias) to `embed_dim` and L2-normalised.
Its weights come from the checkpoint (`load_pretrained`, called by the trainer
after init); `remat` and `scan_layers` do not apply to it.

`config.frozen_towers` freezes towers: everything before a frozen tower's
projection head gets no gradient (`jax.lax.stop_gradient`, which also skips its
backward pass) and no weight decay (`is_frozen`, read by the optimizer), so it
keeps its values exactly; the head still trains. LiT-style training of the
other towers against a locked pretrained text tower is
`towers.text.architecture = "minilm"` with `frozen_towers = ("text",)`.

Mixed precision: parameters are float32; inputs are cast to `config.dtype`
inside the towers and all matmuls run in it (bfloat16 on accelerators).
LayerNorm statistics and the attention softmax are computed in float32, and the
embeddings are returned as float32.

Memory and compile time (`config.remat`, `config.scan_layers`): each encoder
block can be rematerialised in the backward pass (`nn.remat`: "full" keeps only
the block's input, "dots_saveable" also keeps its matmul outputs), and a tower's
blocks can run as one `nn.scan` (one compiled block body, however deep the
tower). Both leave the math unchanged. Use them together: without scan, XLA may
schedule the recomputation early and keep the memory anyway (it does on CPU);
inside the scan's backward loop it cannot. Scanning changes the parameter tree:
`encoder/block_{i}/...` becomes `encoder/blocks/...` with a leading [depth] axis;
`stack_blocks` / `unstack_blocks` convert between the two layouts.

Used as pure functions:
  model = MuJo(config)
  params = model.init(rng, batch)["params"]
  embeddings = model.apply({"params": params}, batch)    # {"imu": [B, 256], ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from mujo_jax import bert
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax.modalities import MODALITIES

# Transformer sizes that `config.towers.<modality>.<field>` may override.
TOWER_OVERRIDES = ("width", "depth", "num_heads", "mlp_dim")
# `config.towers.<modality>.architecture` -> the modalities it can encode.
# "transformer": `Tower`'s own encoder, trained from scratch; "minilm": the
# pretrained all-MiniLM-L6-v2 BERT (`bert.py`), whose sizes are fixed.
TOWER_ARCHITECTURES = {"transformer": MODALITIES, "minilm": ("text",)}
MINILM_SIZES = {"width": bert.HIDDEN, "depth": bert.DEPTH, "num_heads": bert.NUM_HEADS,
                "mlp_dim": bert.MLP_DIM}
# `config.remat` -> what an encoder block keeps for the backward pass (None: no remat).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,        # recompute the whole block
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
}


def default_model_config() -> ml_collections.ConfigDict:
  """The base model of the paper's setting: four 4-layer, 256-wide towers."""
  config = ml_collections.ConfigDict()
  config.modalities = MODALITIES
  config.embed_dim = 256            # joint space
  config.width = 256                # transformer width (all towers unless overridden)
  config.depth = 4
  config.num_heads = 4
  config.mlp_dim = 1024
  config.dtype = "float32"          # compute dtype; "bfloat16" on GPU/TPU
  # "xla" or "cudnn" (cuDNN fused attention: GPU only, bfloat16/float16 only).
  config.attention_impl = "xla"
  # Rematerialisation of each encoder block in the backward pass:
  # "none", "full" (recompute everything) or "dots_saveable" (keep matmul outputs).
  config.remat = "none"
  config.scan_layers = False        # nn.scan over the blocks of a tower (one compiled block)
  config.imu_patch = 10             # samples per IMU token
  config.imu_len = 250              # samples per window (5 s at 50 Hz)
  config.imu_channels = 6           # acc xyz, gyro xyz
  config.pose_patch = 5             # frames per pose token
  config.pose_len = 125             # frames per window (5 s at 25 Hz)
  config.num_joints = 17
  config.video_len = 8              # video feature steps (one token each)
  config.video_dim = 1536
  config.text_len = 64              # token ids per text, the tokenizer's [CLS] first
  config.vocab_size = 30522
  config.logit_scale_init = 1 / 0.07
  config.logit_scale_max = 100.0
  # Per-tower overrides of the transformer sizes, e.g. towers.text.depth = 6;
  # unset (None) means the shared value above. `architecture`: a key of
  # TOWER_ARCHITECTURES, e.g. towers.text.architecture = "minilm".
  config.towers = ml_collections.ConfigDict({
      m: ml_collections.ConfigDict({**{f: config_dict.placeholder(int) for f in TOWER_OVERRIDES},
                                    "architecture": "transformer"})
      for m in MODALITIES})
  # Towers trained with everything but their projection head held fixed, e.g. ("text",).
  config.frozen_towers = ()
  return config


def compute_dtype(setting: str) -> str:
  """A config's `compute_dtype` resolved: "auto" is bfloat16 on GPU/TPU, float32 on CPU."""
  if setting != "auto":
    return setting
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a training batch's model inputs, for `config` (a model config).

  For shape inference, parameter init, compilation ahead of time, benchmarks and padding.
  Arrays are float16 as records store them; every modality is marked present and every
  text has its [CLS] and [SEP] only.
  """
  c = config
  return {
      INPUT_KEYS["imu"]: np.zeros((batch_size, c.imu_len, c.imu_channels), np.float16),
      INPUT_KEYS["pose"]: np.zeros((batch_size, c.pose_len, c.num_joints, 3), np.float16),
      INPUT_KEYS["video"]: np.zeros((batch_size, c.video_len, c.video_dim), np.float16),
      INPUT_KEYS["text"]: np.zeros((batch_size, c.text_len), np.int32),
      "text_len": np.full((batch_size,), 2, np.int32),
      "modality_mask": np.ones((batch_size, len(MODALITIES)), np.int32),
  }


def tower_settings(config: ml_collections.ConfigDict, modality: str) -> dict[str, Any]:
  """Everything one tower needs, with per-tower overrides applied.

  Also the source of truth for sequence lengths, so that `analytic_flops` and
  the modules agree: `num_tokens` excludes the tower's own CLS token.
  """
  if modality not in MODALITIES:
    raise ValueError(f"unknown modality {modality!r}; known: {MODALITIES}")
  sizes = {f: config[f] for f in TOWER_OVERRIDES}
  overrides = config.get("towers", {}).get(modality, {})
  sizes.update({f: overrides[f] for f in TOWER_OVERRIDES if overrides.get(f) is not None})
  architecture = overrides.get("architecture", "transformer")
  if modality not in TOWER_ARCHITECTURES.get(architecture, ()):
    known = [a for a, ms in TOWER_ARCHITECTURES.items() if modality in ms]
    raise ValueError(f"towers.{modality}.architecture {architecture!r}: the {modality} tower "
                     f"can be {known}")
  frozen = tuple(config.get("frozen_towers", ()))
  if set(frozen) - set(MODALITIES):
    raise ValueError(f"frozen_towers {frozen}: unknown modalities "
                     f"{sorted(set(frozen) - set(MODALITIES))}; known: {MODALITIES}")
  if architecture == "minilm":
    fixed = {f: overrides[f] for f in TOWER_OVERRIDES
             if overrides.get(f) is not None and overrides[f] != MINILM_SIZES[f]}
    if fixed:
      raise ValueError(f"towers.{modality}: the pretrained minilm tower has fixed sizes "
                       f"{MINILM_SIZES}; unset the overrides {fixed}")
    if config.vocab_size != bert.VOCAB_SIZE or config.text_len > bert.MAX_POSITIONS:
      raise ValueError(f"towers.{modality}.architecture 'minilm' needs vocab_size "
                       f"{bert.VOCAB_SIZE} (got {config.vocab_size}) and text_len <= "
                       f"{bert.MAX_POSITIONS} (got {config.text_len})")
    sizes = dict(MINILM_SIZES)
  if sizes["width"] % sizes["num_heads"]:
    raise ValueError(f"{modality} tower: width {sizes['width']} is not divisible by "
                     f"num_heads {sizes['num_heads']}")
  if modality == "imu":
    length, patch, features = config.imu_len, config.imu_patch, config.imu_channels
  elif modality == "pose":
    length, patch, features = config.pose_len, config.pose_patch, config.num_joints * 3
  elif modality == "video":
    length, patch, features = config.video_len, 1, config.video_dim
  else:
    length, patch, features = config.text_len - 1, 1, 0   # the tokenizer's [CLS] is dropped
  if length % patch:
    raise ValueError(f"{modality} tower: length {length} is not divisible by patch {patch}")
  remat = config.get("remat", "none")
  if remat not in REMAT_POLICIES:
    raise ValueError(f"unknown config.remat {remat!r}; known: {tuple(REMAT_POLICIES)}")
  return dict(sizes, modality=modality, embed_dim=config.embed_dim, patch_size=patch,
              num_tokens=length // patch, token_features=patch * features,
              vocab_size=config.vocab_size if modality == "text" else 0,
              dtype=config.dtype, attention_impl=config.get("attention_impl", "xla"),
              remat=remat, scan_layers=bool(config.get("scan_layers", False)),
              architecture=architecture, frozen=modality in frozen)


def is_frozen(path: str, config: ml_collections.ConfigDict | None) -> bool:
  """Whether the "/"-joined parameter path is held fixed by `config.frozen_towers`.

  Everything of a frozen tower but its projection head is; the optimizer gives
  these no weight decay (their gradients are zero, so Adam leaves them as they are).
  """
  parts = path.split("/")
  frozen = tuple(config.get("frozen_towers", ())) if config is not None else ()
  return parts[0] in frozen and parts[1:2] != ["head"]


def load_pretrained(params, config: ml_collections.ConfigDict):
  """`params` with the encoder of every pretrained tower replaced by its checkpoint.

  For `architecture = "minilm"` towers `params[m]["bert"]` becomes the
  all-MiniLM-L6-v2 weights (float32 numpy; the caller places them on devices).
  Other towers are passed through. Raises ValueError when the shapes differ.
  """
  out = dict(params)
  for modality in config.modalities:
    if tower_settings(config, modality)["architecture"] != "minilm":
      continue
    loaded = bert.load_minilm_params()
    want = jax.tree.map(np.shape, params[modality]["bert"])
    if jax.tree.map(np.shape, loaded) != want:
      raise ValueError(f"the all-MiniLM-L6-v2 checkpoint does not fit {modality}/bert: "
                       f"{jax.tree.map(np.shape, loaded)} vs {want}")
    out[modality] = dict(params[modality], bert=loaded)
  return out


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """Groups consecutive time steps into tokens: `[B, T, ...]` -> `[B, T/p, p * prod(...)]`.

  Token k holds steps k*p .. k*p + p-1 in order, each step's features flattened
  row-major, so element (t, f) of the input lands at token t // p, position
  (t % p) * F + f.
  """
  batch, steps = x.shape[:2]
  if steps % patch_size:
    raise ValueError(f"{steps} time steps are not divisible by patch size {patch_size}")
  return x.reshape(batch, steps // patch_size, -1)


class TokenDense(nn.Module):
  """nn.DenseGeneral over the last `in_axes` axes, computed as one 2-D matmul.

  Same parameters, initialisation and math as nn.Dense / nn.DenseGeneral
  (kernel [in..., features...], bias [features...]), but the token axes are
  flattened into one row axis first. Over `[B, N, D]` inputs the weight
  gradient of a plain Dense contracts two axes (B and N), which XLA:CPU does
  not hand to its fast matmul library but runs as a slower generic dot after
  transposing copies; as `[B*N, D] @ [D, F]` both gradients are plain matmuls.
  Elsewhere the reshapes are free.
  """
  features: tuple[int, ...]
  in_axes: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lead, contracted = x.shape[:-self.in_axes], x.shape[-self.in_axes:]
    fan_in, fan_out = math.prod(contracted), math.prod(self.features)
    # Initialised on the flat [fan_in, fan_out] shape, as nn.DenseGeneral does.
    init = lambda rng, shape, dtype: self.kernel_init(rng, (fan_in, fan_out), dtype).reshape(shape)
    kernel = self.param("kernel", init, contracted + tuple(self.features), jnp.float32)
    y = jnp.dot(x.reshape(-1, fan_in).astype(self.dtype),
                kernel.reshape(fan_in, fan_out).astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, tuple(self.features), jnp.float32)
      y = y + bias.reshape(fan_out).astype(self.dtype)
    return y.reshape(lead + tuple(self.features))


class Attention(nn.Module):
  """Multi-head self-attention over `[B, N, width]` via `jax.nn.dot_product_attention`."""
  num_heads: int
  dtype: Any = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None,
               key_lengths: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    # [B, N, heads, head_dim] each.
    q, k, v = (TokenDense((self.num_heads, head_dim), dtype=self.dtype, name=n)(x)
               for n in ("query", "key", "value"))
    mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)  # [B, 1, 1, N]
    lengths = None if key_lengths is None else key_lengths.astype(jnp.int32)
    y = jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=lengths,
                                     implementation=self.implementation)
    return TokenDense((width,), in_axes=2, dtype=self.dtype, name="out")(y)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, key_mask=None, key_lengths=None):
    norm = lambda name: nn.LayerNorm(name=name, dtype=self.dtype, param_dtype=jnp.float32)
    dense = lambda name, features: TokenDense((features,), dtype=self.dtype, name=name)
    x = x + Attention(self.num_heads, self.dtype, self.attention_impl, name="attention")(
        norm("norm_attention")(x), key_mask, key_lengths)
    y = dense("mlp_in", self.mlp_dim)(norm("norm_mlp")(x))
    return x + dense("mlp_out", x.shape[-1])(nn.gelu(y))


class _ScanBlock(EncoderBlock):
  """An `EncoderBlock` with `nn.scan`'s body signature: (carry, broadcast...) -> (carry, None)."""

  def __call__(self, x, key_mask=None, key_lengths=None):
    return super().__call__(x, key_mask, key_lengths), None


class Encoder(nn.Module):
  """A stack of pre-LN transformer blocks over `[B, N, width]` (no final norm).

  Padding is given either as `key_mask [B, N]` (True = real token) or, cheaper
  and usable by cuDNN's fused attention, as `key_lengths [B]` (the first
  `key_lengths[b]` tokens are real). Padded tokens are never attended to; their
  own outputs are meaningless.

  `remat` (a key of `REMAT_POLICIES`) trades backward-pass memory for
  recomputation per block; `scan` runs the blocks as one `nn.scan` (parameters
  "blocks" with a leading [depth] axis instead of "block_{i}"), remat inside the
  scan body as in Flax and MaxText.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  attention_impl: str = "xla"
  remat: str = "none"
  scan: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None,
               key_lengths: jax.Array | None = None) -> jax.Array:
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat {self.remat!r}; known: {tuple(REMAT_POLICIES)}")
    block = _ScanBlock if self.scan else EncoderBlock
    if self.remat != "none":
      # Inside scan the loop boundary already keeps XLA from merging the
      # recomputation into the forward pass; the CSE barrier would only cost.
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
    args = (self.num_heads, self.mlp_dim, self.dtype, self.attention_impl)
    if self.scan:
      blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast), length=self.depth)
      x, _ = blocks(*args, name="blocks")(x, key_mask, key_lengths)
      return x
    for i in range(self.depth):
      x = block(*args, name=f"block_{i}")(x, key_mask, key_lengths)
    return x


class Tower(nn.Module):
  """One modality's encoder: raw input -> `[B, embed_dim]` float32 unit vectors.

  Attributes are those of `tower_settings`. `inputs` is `[B, T, C]` (imu, video),
  `[B, T, J, 3]` (pose) or int ids `[B, L]` (text, with `text_len [B]` = number
  of real ids including the tokenizer's [CLS] at position 0).
  """
  modality: str
  embed_dim: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_tokens: int
  token_features: int
  patch_size: int = 1
  vocab_size: int = 0
  dtype: Any = "float32"
  attention_impl: str = "xla"
  remat: str = "none"
  scan_layers: bool = False
  architecture: str = "transformer"
  frozen: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array, text_len: jax.Array | None = None) -> jax.Array:
    dtype = jnp.dtype(self.dtype)
    if self.architecture == "minilm":
      # [B, L] ids with the tokenizer's [CLS] -> [B, 384] unit sentence embeddings.
      hidden = bert.Bert(dtype=dtype, attention_impl=self.attention_impl, name="bert")(
          inputs, text_len)
      x = bert.normalize(bert.mean_pool(hidden, text_len))
      return self.project(jax.lax.stop_gradient(x) if self.frozen else x, dtype)
    batch = inputs.shape[0]
    key_lengths = None
    if self.modality == "text":
      ids = inputs[:, 1:]                       # [B, L-1]: the tokenizer's [CLS] dropped
      # Gather in float32 (the table stays float32), then cast: [B, L-1, width].
      tokens = nn.Embed(self.vocab_size, self.width, name="token_embedding",
                        embedding_init=nn.initializers.normal(0.02))(ids).astype(dtype)
      # Real keys: our CLS plus ids 1 .. text_len-1 of the input = a prefix of
      # length text_len (text_len = 0, a dropped text, still keeps the CLS).
      key_lengths = jnp.clip(jnp.asarray(text_len), 1, ids.shape[1] + 1)
    else:
      patches = patchify(inputs.astype(dtype), self.patch_size)   # [B, N, p * C]
      tokens = TokenDense((self.width,), dtype=dtype, name="input_proj")(patches)
    if tokens.shape[1:] != (self.num_tokens, self.width):
      raise ValueError(f"{self.modality} tower expects {self.num_tokens} tokens, got "
                       f"{tokens.shape[1]} from inputs of shape {inputs.shape}")
    pos_embedding = self.param("pos_embedding", nn.initializers.normal(0.02),
                               (1, self.num_tokens, self.width), jnp.float32)
    # Not zeros: the first block's LayerNorm divides a constant token by sqrt(eps),
    # which scales the CLS gradient by ~1/sqrt(eps) and lets it alone set the
    # global gradient norm (and so the clipping of every other parameter).
    # LayerNorm scales its input's gradient by 1/std, so the CLS gradient shrinks
    # as its init grows; width**-0.5 as in CLIP.
    cls = self.param("cls", nn.initializers.normal(self.width ** -0.5), (1, 1, self.width),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (batch, 1, self.width)),
                         tokens + pos_embedding.astype(dtype)], axis=1)   # [B, N+1, width]
    x = Encoder(self.depth, self.num_heads, self.mlp_dim, dtype, self.attention_impl,
                self.remat, self.scan_layers, name="encoder")(x, key_lengths=key_lengths)
    x = nn.LayerNorm(name="norm_out", dtype=dtype, param_dtype=jnp.float32)(x[:, 0])
    return self.project(jax.lax.stop_gradient(x) if self.frozen else x, dtype)

  def project(self, x: jax.Array, dtype) -> jax.Array:
    """`[B, width]` -> `[B, embed_dim]` float32 unit vectors (the trainable head)."""
    x = nn.Dense(self.embed_dim, use_bias=False, name="head", dtype=dtype,
                 param_dtype=jnp.float32,
                 kernel_init=nn.initializers.normal(self.width ** -0.5))(x)
    return l2_normalize(x.astype(jnp.float32))


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Unit vectors along the last axis; `eps` keeps the gradient finite at 0."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class MuJo(nn.Module):
  """One `Tower` per enabled modality (params[modality]) and the logit scale.

  `__call__(batch, modalities)` embeds the requested modalities (default: all
  enabled) from batch keys "imu", "pose", "video", "text_ids" (+ "text_len");
  other keys are ignored. Returns {modality: [B, embed_dim] float32 unit vectors}.
  """
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array],
               modalities: Sequence[str] | None = None) -> dict[str, jax.Array]:
    enabled = tuple(self.config.modalities)
    modalities = enabled if modalities is None else tuple(modalities)
    unknown = sorted(set(modalities) - set(enabled))
    if unknown:
      raise ValueError(f"modalities {unknown} are not enabled (config.modalities={enabled})")
    self.param("log_logit_scale",
               nn.initializers.constant(math.log(self.config.logit_scale_init)), (), jnp.float32)
    embeddings = {}
    for modality in modalities:
      settings = tower_settings(self.config, modality)
      inputs = jnp.asarray(batch[INPUT_KEYS[modality]])
      if modality == "imu" and inputs.ndim != 3:
        raise ValueError(f"imu must be [B, T, C] (one sensor location per example), "
                         f"got shape {inputs.shape}")
      text_len = batch["text_len"] if modality == "text" else None
      embeddings[modality] = Tower(**settings, name=modality)(inputs, text_len)
    return embeddings

  def logit_scale(self) -> jax.Array:
    """exp(log_logit_scale); use via `apply(..., method=...)`."""
    return logit_scale({"log_logit_scale": self.get_variable("params", "log_logit_scale")})


def logit_scale(params) -> jax.Array:
  """The contrastive temperature's inverse, exp(log_logit_scale).

  Not capped here: a cap on the value (min) gives the parameter zero gradient
  beyond it, so it could drift past the cap and stay there. The trainer clamps
  the parameter itself after every update instead (`clamp_logit_scale`), as CLIP
  does.
  """
  return jnp.exp(params["log_logit_scale"])


def clamp_logit_scale(params, config: ml_collections.ConfigDict):
  """params with log_logit_scale clipped to [0, log(logit_scale_max)] (scale in [1, max])."""
  cap = math.log(config.logit_scale_max)
  return dict(params, log_logit_scale=jnp.clip(params["log_logit_scale"], 0.0, cap))


def param_count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def analytic_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward-pass FLOPs per example of each enabled tower, plus "total".

  Counts 2*m*n*k per matmul (input projection, Q/K/V, attention scores and
  weighted values, output projection, MLP, head); the text embedding is a
  gather (0 FLOPs) and elementwise work (norms, softmax, GELU) is ignored.
  Padded text tokens are computed like real ones, so they count too.
  These are model FLOPs: the same whatever `config.remat` (recomputation in
  the backward pass is extra hardware work, not model work, so MFU ignores it)
  and `config.scan_layers`.
  """
  flops = {}
  for modality in config.modalities:
    s = tower_settings(config, modality)
    width, n = s["width"], s["num_tokens"] + 1          # + CLS
    embed = 0 if modality == "text" else 2 * s["num_tokens"] * s["token_features"] * width
    per_block = (2 * n * width * 3 * width                # Q, K, V
                 + 2 * 2 * n * n * width                  # scores and weighted values
                 + 2 * n * width * width                  # output projection
                 + 2 * 2 * n * width * s["mlp_dim"])      # MLP in and out
    head = 2 * width * config.embed_dim                  # CLS only
    flops[modality] = float(embed + s["depth"] * per_block + head)
  flops["total"] = float(sum(flops.values()))
  return flops


def stack_blocks(params, config: ml_collections.ConfigDict):
  """Unscanned -> scanned parameter layout, per enabled tower of `config`.

  `{m}/encoder/block_{i}/...` (i < depth) -> `{m}/encoder/blocks/...` with
  leaves stacked on a new leading [depth] axis (what `scan_layers=True` uses).
  Pure; other parameters are passed through unchanged.
  """
  def stack(modality, encoder):
    depth = tower_settings(config, modality)["depth"]
    names = [f"block_{i}" for i in range(depth)]
    if set(encoder) != set(names):
      raise ValueError(f"stack_blocks: {modality}/encoder has {sorted(encoder)}, expected "
                       f"{names} (depth {depth}): not an unscanned tower of this config")
    return {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *(encoder[n] for n in names))}
  return _map_encoders(params, config, stack)


def unstack_blocks(params, config: ml_collections.ConfigDict):
  """Scanned -> unscanned parameter layout (the inverse of `stack_blocks`).

  `{m}/encoder/blocks/...` with a leading [depth] axis -> `{m}/encoder/block_{i}/...`,
  the layout the PyTorch export and per-block code read.
  """
  def unstack(modality, encoder):
    depth = tower_settings(config, modality)["depth"]
    if set(encoder) != {"blocks"}:
      raise ValueError(f"unstack_blocks: {modality}/encoder has {sorted(encoder)}, expected "
                       f"['blocks']: not a scanned tower")
    leading = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(encoder["blocks"])}
    if leading != {depth}:
      raise ValueError(f"unstack_blocks: {modality}/encoder/blocks has leading axes "
                       f"{sorted(leading, key=str)}, expected the tower's depth {depth}")
    return {f"block_{i}": jax.tree.map(lambda x, i=i: x[i], encoder["blocks"])
            for i in range(depth)}
  return _map_encoders(params, config, unstack)


def _map_encoders(params, config, fn):
  """A copy of `params` with `params[m]["encoder"]` replaced by fn(m, it) for each tower.

  Pretrained towers (not "transformer") have no such encoder and pass through.
  """
  out = dict(params)
  for modality in config.modalities:
    if tower_settings(config, modality)["architecture"] != "transformer":
      continue
    if modality not in params:
      raise ValueError(f"params have no {modality!r} tower (config.modalities="
                       f"{tuple(config.modalities)}); have {sorted(params)}")
    out[modality] = dict(params[modality], encoder=fn(modality, params[modality]["encoder"]))
  return out
