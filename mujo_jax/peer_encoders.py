"""CMC-CMKM's encoders, projection head and evaluation classifier (Brinzea et al., IJCNN 2022).

Flax versions of the PyTorch modules of the public reference code (razzu/cmc-cmkm), written so that,
with the same weights, they compute the same functions:
  CmkmInertialEncoder  imu  [B, T, 6]     -> [B, 128 * (T - 6)]   (CNNTransformer, kernel 5, pad 1)
  HcnSkeletonEncoder   pose [B, T, J, 3]  -> [B, 256]              (SkeletonCooccurenceBlocks, T=50)
  ProjectionHead       [B, F] -> [B, 128]  (ProjectionMLP: Linear+BN+ReLU, Linear; not normalised)
  FusionClassifier     {modality: [B, F]} -> logits [B, num_classes]   (MultiModalClassifier's head)

Our batches are time-major and channels-last; the reference is channels-first. The encoders take our
layout and run channels-last convolutions, which is the same computation; each flattened feature
vector is put in PyTorch's order (channel-major: `c * T + t`, or `c * H * W + h * W + w`), so that a
linear layer on the features is the same function in both.

Where we differ from the reference, on purpose:
- BatchNorm (`TorchBatchNorm`) follows PyTorch rather than `flax.linen.BatchNorm`: the running
  variance is updated with the unbiased batch variance (PyTorch's rule; Flax uses the biased one),
  so the running statistics, and hence eval-mode outputs, match the reference's after training.
  Normalisation in train mode uses the biased variance, as in both libraries.
- Parameters are initialised with PyTorch's defaults (uniform, bound 1/sqrt(fan_in), for conv and
  linear weights and biases; Xavier-uniform query/key/value projections with zero biases in
  attention), so training starts from the same distribution as the reference. PyTorch's
  `nn.TransformerEncoder` starts all its layers from one copy of the same weights; ours draws each
  layer independently, which we judge immaterial.
- The positional encoding is computed for the input's length instead of a table of `sample_length`
  rows, so other lengths work (the reference fails beyond `sample_length`); at T = 50 it is equal.

Use:
  encoder = CmkmInertialEncoder()
  variables = encoder.init(rng, imu)                   # {"params", "batch_stats"}
  features, updates = encoder.apply(variables, imu, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": dropout_rng})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mujo_jax import model as model_lib

# PyTorch's default weight init (kaiming_uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _uniform(bound: float) -> nn.initializers.Initializer:
  """U(-bound, bound), whatever the shape."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias init for a conv or linear layer with `fan_in` inputs."""
  return _uniform(1.0 / math.sqrt(fan_in))


def _torch_dense(features: int, in_features: int, dtype: Any, name: str) -> model_lib.TokenDense:
  """nn.Dense's parameters, PyTorch's init; over [B, N, C] a single 2-D matmul (TokenDense)."""
  return model_lib.TokenDense((features,), dtype=dtype, kernel_init=_TORCH_KERNEL_INIT,
                              bias_init=_torch_bias_init(in_features), name=name)


def _torch_conv(features: int, kernel_size: Sequence[int], in_features: int, padding: Any,
                dtype: Any, name: str) -> "MatmulConv":
  fan_in = in_features * int(np.prod(kernel_size))
  return MatmulConv(features, tuple(kernel_size), padding=padding, dtype=dtype,
                    kernel_init=_TORCH_KERNEL_INIT, bias_init=_torch_bias_init(fan_in), name=name)


class MatmulConv(nn.Module):
  """A stride-1 convolution over channels-last `x`, computed as patches @ kernel.

  Same parameters (kernel [*kernel_size, in, out], bias [out]), initialisation and values as
  nn.Conv with stride 1. The kernel offsets' shifted slices are stacked into patches
  [rows, prod(kernel_size) * in] and multiplied by the flattened kernel: both gradients are then
  plain matrix products, where XLA:CPU runs a convolution's weight gradient several times
  slower than its forward pass. `padding`: "VALID" or one (low, high) pair per spatial axis.
  """
  features: int
  kernel_size: tuple[int, ...]
  padding: Any = "VALID"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    spatial = len(self.kernel_size)
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, self.kernel_size + (in_features,
                                                                        self.features),
                        jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    if self.padding != "VALID":
      x = jnp.pad(x, ((0, 0),) + tuple(tuple(p) for p in self.padding) + ((0, 0),))
    x = x.astype(self.dtype)
    out = tuple(n - k + 1 for n, k in zip(x.shape[1:1 + spatial], self.kernel_size))
    offsets = np.ndindex(*self.kernel_size)
    patches = jnp.stack([x[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, out))]
                         for offset in offsets], axis=-2)       # [B, *out, K, in]
    rows = patches.reshape(-1, math.prod(self.kernel_size) * in_features)
    y = rows @ kernel.reshape(-1, self.features).astype(self.dtype)
    y = y + bias.astype(self.dtype)
    return y.reshape(x.shape[:1] + out + (self.features,))


class TorchBatchNorm(nn.Module):
  """BatchNorm over all but the last axis, with PyTorch's running-statistics rule.

  Same parameters (`scale`, `bias`) and statistics (`batch_stats/mean`, `batch_stats/var`) as
  `flax.linen.BatchNorm`; `momentum` is Flax's (0.9 = PyTorch's 0.1). Differs from it in one place:
  the running variance takes the unbiased batch variance (n / (n - 1)), as PyTorch's does.
  Statistics are computed in float32 whatever `dtype` is.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      n = int(np.prod([x.shape[a] for a in axes]))
      if n < 2:
        raise ValueError(f"TorchBatchNorm in train mode needs more than one value per channel, "
                         f"got input shape {x.shape}")
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = (self.momentum * ra_var.value
                        + (1.0 - self.momentum) * var * (n / (n - 1)))
    mul = jax.lax.rsqrt(var + self.epsilon) * scale
    y = (x.astype(jnp.float32) - mean) * mul + bias
    return y.astype(self.dtype)


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """The reference's positional encoding [length, dim]: sin on even, cos on odd channels."""
  position = np.arange(length, dtype=np.float32)[:, None]
  div_term = np.exp(np.arange(0, dim, 2, dtype=np.float32) * (-math.log(10000.0) / dim))
  pe = np.zeros((length, dim), np.float32)
  pe[:, 0::2] = np.sin(position * div_term)
  pe[:, 1::2] = np.cos(position * div_term[:dim // 2])
  return pe


class TorchAttention(nn.Module):
  """`torch.nn.MultiheadAttention` (self-attention, dropout on the attention weights).

  The parameters of nn.MultiHeadDotProductAttention (query/key/value kernels [C, heads,
  head_dim], out [heads, head_dim, C]) with PyTorch's init; the projections are TokenDense
  matmuls, whose gradients XLA:CPU computes several times faster than DenseGeneral's over
  [B, T, C].
  """
  num_heads: int
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    xavier = _uniform(math.sqrt(6.0 / (width + 3 * width)))  # xavier on PyTorch's [3C, C]
    q, k, v = (model_lib.TokenDense((self.num_heads, head_dim), dtype=self.dtype,
                                    kernel_init=xavier, name=n)(x)
               for n in ("query", "key", "value"))               # [B, T, heads, head_dim]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(head_dim), k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return model_lib.TokenDense((width,), in_axes=2, dtype=self.dtype,
                                kernel_init=_TORCH_KERNEL_INIT, name="out")(y)


class PostLnEncoderLayer(nn.Module):
  """`torch.nn.TransformerEncoderLayer` with its defaults: post-LN, ReLU MLP, dropout everywhere.

  x [B, T, C] -> [B, T, C]. Dropout on the attention weights, after attention, inside the MLP and
  after it, as PyTorch places it (not broadcast over batch or heads).
  """
  num_heads: int
  mlp_dim: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    y = TorchAttention(self.num_heads, self.dropout, self.dtype, name="attention")(x, train)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x + y)
    y = _torch_dense(self.mlp_dim, width, self.dtype, "dense1")(x)
    y = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(y))
    y = _torch_dense(width, self.mlp_dim, self.dtype, "dense2")(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x + y)


class CmkmInertialEncoder(nn.Module):
  """The reference's inertial encoder (CNNTransformer): 1D CNN, then a Transformer over time.

  x [B, T, C] -> [B, out_channels[-1] * T'] with T' = T - 3 * (kernel_size - 1 - 2 * padding)
  (128 * 44 = 5632 at T = 50, kernel 5, padding 1), flattened channel-major as PyTorch's
  `Flatten` of its [B, C, T'] output. Each conv block is Conv1d + BatchNorm + ReLU (no pooling),
  then the sinusoidal positional encoding (with dropout) and `num_layers` post-LN encoder layers.
  """
  out_channels: tuple = (32, 64, 128)
  kernel_size: int = 5
  padding: int = 1
  num_heads: int = 2
  num_layers: int = 2
  mlp_dim: int = 2048
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    for i, channels in enumerate(self.out_channels):
      conv = _torch_conv(channels, (self.kernel_size,), x.shape[-1],
                         ((self.padding, self.padding),), self.dtype, f"conv{i + 1}")
      x = conv(x)
      x = TorchBatchNorm(dtype=self.dtype, name=f"bn{i + 1}")(x, use_running_average=not train)
      x = nn.relu(x)
    length, width = x.shape[-2:]
    x = x + jnp.asarray(sinusoidal_positions(length, width), self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = PostLnEncoderLayer(self.num_heads, self.mlp_dim, self.dropout, self.dtype,
                             name=f"layer{i + 1}")(x, train)
    return jnp.transpose(x, (0, 2, 1)).reshape(x.shape[0], -1)


class HcnSkeletonEncoder(nn.Module):
  """The reference's skeleton encoder (SkeletonCooccurenceBlocks, HCN-style co-occurrence CNN).

  x [B, T, J, 3] -> [B, F]; F = 256 at T = 50, J = 20. Two streams, the joint positions and their
  frame differences ('motions', first frame zero), each go through conv1 (+BN+ReLU) and conv2 (+BN)
  over (time, joint); then joints become the channels (PyTorch's permute to [B, J, C, T]), so
  conv3/conv4 (+BN+max-pool) see (feature, time) images whose channels are joints: the
  co-occurrence step. The two streams are concatenated along the feature axis and go through
  conv5/conv6 (+BN+ReLU+max-pool). Convolutions are unpadded and pools floor, as in PyTorch.
  The output is flattened as PyTorch's `Flatten` of [B, C, H, W].
  """
  out_channels: tuple = (64, 32, 32, 64, 128, 256)
  kernel_sizes: tuple = ((1, 1), (3, 1), (3, 3), (3, 3), (3, 3), (3, 3))
  max_pool_sizes: tuple = (None, None, 2, 2, 2, 2)
  dtype: Any = jnp.float32

  def _block(self, x: jax.Array, i: int, stream: str, relu: bool, train: bool) -> jax.Array:
    """Conv (layer i, 0-based) + BatchNorm (+ ReLU) (+ max-pool) on NHWC `x`."""
    suffix = f"{i + 1}_{stream}" if stream else f"{i + 1}"
    x = _torch_conv(self.out_channels[i], self.kernel_sizes[i], x.shape[-1], "VALID", self.dtype,
                    f"conv{suffix}")(x)
    x = TorchBatchNorm(dtype=self.dtype, name=f"bn{suffix}")(x, use_running_average=not train)
    if relu:
      x = nn.relu(x)
    pool = self.max_pool_sizes[i]
    if pool:
      x = nn.max_pool(x, (pool, pool), strides=(pool, pool), padding="VALID")
    return x

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    joints = x.astype(self.dtype)                      # NHWC view of PyTorch's [B, 3, T, J]
    motions = jnp.concatenate([jnp.zeros_like(joints[:, :1]), joints[:, 1:] - joints[:, :-1]],
                              axis=1)
    streams = []
    for stream, y in (("joints", joints), ("motions", motions)):
      y = self._block(y, 0, stream, relu=True, train=train)
      y = self._block(y, 1, stream, relu=False, train=train)
      y = jnp.transpose(y, (0, 3, 1, 2))               # [B, C, T', J]: joints become channels
      y = self._block(y, 2, stream, relu=False, train=train)
      y = self._block(y, 3, stream, relu=False, train=train)
      streams.append(y)
    x = jnp.concatenate(streams, axis=1)               # PyTorch's cat on dim 2 (H)
    x = self._block(x, 4, "", relu=True, train=train)
    x = self._block(x, 5, "", relu=True, train=train)
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class ProjectionHead(nn.Module):
  """The reference's projection head (ProjectionMLP): Dense+BN+ReLU, Dense. [B, F] -> [B, 128].

  The output is not normalised; the contrastive loss normalises it.
  """
  hidden: tuple = (256, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    x = _torch_dense(self.hidden[0], x.shape[-1], self.dtype, "dense1")(x)
    x = TorchBatchNorm(dtype=self.dtype, name="bn1")(x, use_running_average=not train)
    x = nn.relu(x)
    return _torch_dense(self.hidden[1], self.hidden[0], self.dtype, "dense2")(x)


class FusionClassifier(nn.Module):
  """The reference's evaluation head (MultiModalClassifier without its encoders).

  features {modality: [B, F_m]} -> logits [B, num_classes]: per modality Dense(hidden) + BN + ReLU,
  concatenated in `modalities` order, then one Dense. With one modality it is the single-modality
  head. Features are flattened first, as the reference does.
  """
  num_classes: int
  modalities: tuple[str, ...]
  hidden: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: dict[str, jax.Array], train: bool = False) -> jax.Array:
    outs = []
    for modality in self.modalities:
      if modality not in features:
        raise KeyError(f"FusionClassifier: no features for modality {modality!r}; "
                       f"got {sorted(features)}")
      x = features[modality]
      x = x.reshape(x.shape[0], -1).astype(self.dtype)
      x = _torch_dense(self.hidden, x.shape[-1], self.dtype, f"{modality}_dense")(x)
      x = TorchBatchNorm(dtype=self.dtype, name=f"{modality}_bn")(x, use_running_average=not train)
      outs.append(nn.relu(x))
    x = jnp.concatenate(outs, axis=-1)
    return _torch_dense(self.num_classes, x.shape[-1], self.dtype, "classifier")(x)


FEATURE_ENCODERS = {"cmkm_inertial": CmkmInertialEncoder, "hcn": HcnSkeletonEncoder}
