"""The CMC-CMKM modules against compact PyTorch transcriptions of the reference architectures.

Each test builds the PyTorch module, copies its weights (and random BatchNorm running statistics)
into Flax variables, and checks that both compute the same thing, to an absolute tolerance of
1e-4 on outputs of unit scale: in eval mode (running statistics, no dropout), in train mode with
dropout 0 (batch statistics), and the running statistics after one train-mode call.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mujo_jax import peer_encoders

torch = pytest.importorskip("torch")
tnn = torch.nn

ATOL = 1e-4


# ---------------------------------------------------------------- PyTorch references (NCHW)


class TorchInertial(tnn.Module):
  """CNNTransformer: 3 x (Conv1d + BN + ReLU), positional encoding, post-LN Transformer."""

  def __init__(self, length, dropout, channels=(32, 64, 128), kernel=5, padding=1):
    super().__init__()
    layers, prev = [], 6
    for c in channels:
      layers += [tnn.Conv1d(prev, c, kernel, padding=padding), tnn.BatchNorm1d(c), tnn.ReLU()]
      prev = c
    self.convs = tnn.Sequential(*layers)
    self.register_buffer("pe", torch.from_numpy(_torch_pe_reference(length, prev)))
    self.drop = tnn.Dropout(dropout)
    layer = tnn.TransformerEncoderLayer(d_model=prev, nhead=2, dropout=dropout)
    self.encoder = tnn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

  def forward(self, x):                                  # [B, 6, T]
    x = self.convs(x).permute(2, 0, 1)                   # [T', B, C]
    x = self.encoder(self.drop(x + self.pe[:x.shape[0], None, :]))
    return x.permute(1, 2, 0).flatten(1)


def _torch_pe_reference(length, dim):
  """The reference's PositionalEncoding table, computed with torch, [length, dim]."""
  pe = torch.zeros(length, dim)
  position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
  div_term = torch.exp(torch.arange(0, dim, 2).float() * (-np.log(10000.0) / dim))
  pe[:, 0::2] = torch.sin(position * div_term)
  pe[:, 1::2] = torch.cos(position * div_term)
  return pe.numpy()


def _conv_bn(cin, cout, kernel, relu, pool):
  layers = [tnn.Conv2d(cin, cout, kernel), tnn.BatchNorm2d(cout)]
  layers += [tnn.ReLU()] if relu else []
  layers += [tnn.MaxPool2d(pool)] if pool else []
  return tnn.Sequential(*layers)


class TorchHcn(tnn.Module):
  """SkeletonCooccurenceBlocks with the UTD configuration."""

  def __init__(self, joints=20):
    super().__init__()
    ch = (64, 32, 32, 64, 128, 256)
    ks = ((1, 1), (3, 1), (3, 3), (3, 3), (3, 3), (3, 3))
    for s in ("joints", "motions"):
      setattr(self, f"conv1_{s}", _conv_bn(3, ch[0], ks[0], True, None))
      setattr(self, f"conv2_{s}", _conv_bn(ch[0], ch[1], ks[1], False, None))
      setattr(self, f"conv3_{s}", _conv_bn(joints, ch[2], ks[2], False, 2))
      setattr(self, f"conv4_{s}", _conv_bn(ch[2], ch[3], ks[3], False, 2))
    self.conv5 = _conv_bn(ch[3], ch[4], ks[4], True, 2)
    self.conv6 = _conv_bn(ch[4], ch[5], ks[5], True, 2)

  def forward(self, x):                                  # [B, 3, T, J]
    motions = torch.zeros_like(x)
    motions[:, :, 1:] = x[:, :, 1:] - x[:, :, :-1]
    outs = []
    for s, y in (("joints", x), ("motions", motions)):
      y = getattr(self, f"conv2_{s}")(getattr(self, f"conv1_{s}")(y)).permute(0, 3, 1, 2)
      outs.append(getattr(self, f"conv4_{s}")(getattr(self, f"conv3_{s}")(y)))
    return self.conv6(self.conv5(torch.cat(outs, dim=2))).flatten(1)


class TorchProjection(tnn.Module):
  """ProjectionMLP with hidden [256, 128]."""

  def __init__(self, in_size):
    super().__init__()
    self.linear1 = tnn.Sequential(tnn.Linear(in_size, 256), tnn.BatchNorm1d(256), tnn.ReLU())
    self.linear2 = tnn.Linear(256, 128)

  def forward(self, x):
    return self.linear2(self.linear1(x))


class TorchFusion(tnn.Module):
  """MultiModalClassifier's projections and classifier."""

  def __init__(self, in_sizes, modalities, num_classes):
    super().__init__()
    self.modalities = modalities
    self.projections = tnn.ModuleDict({
        m: tnn.Sequential(tnn.Linear(in_sizes[m], 256), tnn.BatchNorm1d(256), tnn.ReLU())
        for m in modalities})
    self.classifier = tnn.Linear(256 * len(modalities), num_classes)

  def forward(self, x):
    return self.classifier(torch.cat([self.projections[m](x[m]) for m in self.modalities], dim=1))


# ---------------------------------------------------------------- weight copy: PyTorch -> Flax


def _np(t):
  return t.detach().cpu().numpy().copy()


def _linear(m):
  return {"kernel": _np(m.weight).T, "bias": _np(m.bias)}


def _conv(m):
  w = _np(m.weight)                                      # [out, in, *kernel]
  return {"kernel": np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)), "bias": _np(m.bias)}


def _bn(m):
  return ({"scale": _np(m.weight), "bias": _np(m.bias)},
          {"mean": _np(m.running_mean), "var": _np(m.running_var)})


def _layer_norm(m):
  return {"scale": _np(m.weight), "bias": _np(m.bias)}


def _attention(m):
  width, heads = m.embed_dim, m.num_heads
  ws = np.split(_np(m.in_proj_weight), 3)
  bs = np.split(_np(m.in_proj_bias), 3)
  out = {name: {"kernel": w.T.reshape(width, heads, -1), "bias": b.reshape(heads, -1)}
         for name, w, b in zip(("query", "key", "value"), ws, bs)}
  out["out"] = {"kernel": _np(m.out_proj.weight).T.reshape(heads, -1, width),
                "bias": _np(m.out_proj.bias)}
  return out


def _add_bn(params, stats, name, m):
  params[name], stats[name] = _bn(m)


def inertial_variables(ref):
  params, stats = {}, {}
  convs = [m for m in ref.convs if isinstance(m, tnn.Conv1d)]
  bns = [m for m in ref.convs if isinstance(m, tnn.BatchNorm1d)]
  for i, (conv, bn) in enumerate(zip(convs, bns)):
    params[f"conv{i + 1}"] = _conv(conv)
    _add_bn(params, stats, f"bn{i + 1}", bn)
  for i, layer in enumerate(ref.encoder.layers):
    params[f"layer{i + 1}"] = {
        "attention": _attention(layer.self_attn), "norm1": _layer_norm(layer.norm1),
        "dense1": _linear(layer.linear1), "dense2": _linear(layer.linear2),
        "norm2": _layer_norm(layer.norm2)}
  return {"params": params, "batch_stats": stats}


def hcn_variables(ref):
  params, stats = {}, {}
  blocks = {f"{i}_{s}": getattr(ref, f"conv{i}_{s}") for i in range(1, 5)
            for s in ("joints", "motions")}
  blocks.update({"5": ref.conv5, "6": ref.conv6})
  for suffix, block in blocks.items():
    params[f"conv{suffix}"] = _conv(block[0])
    _add_bn(params, stats, f"bn{suffix}", block[1])
  return {"params": params, "batch_stats": stats}


def projection_variables(ref):
  params, stats = {"dense1": _linear(ref.linear1[0]), "dense2": _linear(ref.linear2)}, {}
  _add_bn(params, stats, "bn1", ref.linear1[1])
  return {"params": params, "batch_stats": stats}


def fusion_variables(ref):
  params, stats = {"classifier": _linear(ref.classifier)}, {}
  for m, proj in ref.projections.items():
    params[f"{m}_dense"] = _linear(proj[0])
    _add_bn(params, stats, f"{m}_bn", proj[1])
  return {"params": params, "batch_stats": stats}


# ---------------------------------------------------------------- checks


def _randomise_batch_norms(ref, seed):
  """Random affine parameters and running statistics, so eval mode tests them."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, tnn.modules.batchnorm._BatchNorm):
        c = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
        m.bias.copy_(0.2 * torch.randn(c, generator=gen))
        m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def _assert_same_tree(module, variables, example):
  """The copied variables have exactly the names and shapes that the module creates."""
  init = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), example))
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.tree_util.keystr(path), tuple(x.shape)), tree)
  assert jax.tree_util.tree_leaves(shapes(dict(init))) == jax.tree_util.tree_leaves(
      shapes(variables))


def _check_against_torch(module, ref, variables, flax_input, torch_input, expected_size):
  """Eval mode and train mode (batch statistics); returns Flax's updated running statistics."""
  _assert_same_tree(module, variables, flax_input)

  ref.eval()
  with torch.no_grad():
    expected = ref(torch_input).numpy()
  out = module.apply(variables, flax_input, train=False)
  assert out.shape == expected.shape
  assert out.shape[1:] == (expected_size,)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=ATOL)

  ref.train()
  with torch.no_grad():
    expected = ref(torch_input).numpy()
  out, updates = module.apply(variables, flax_input, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=ATOL)
  return updates["batch_stats"]


def _assert_stats_equal(updated, expected):
  flat_updated = jax.tree_util.tree_leaves_with_path(updated)
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert len(flat_updated) == len(flat_expected)
  for path, value in flat_updated:
    np.testing.assert_allclose(np.asarray(value), flat_expected[path], rtol=0, atol=ATOL,
                               err_msg=jax.tree_util.keystr(path))


def test_positional_encoding_matches_reference():
  np.testing.assert_allclose(peer_encoders.sinusoidal_positions(50, 128),
                             _torch_pe_reference(50, 128), rtol=0, atol=1e-5)


@pytest.mark.parametrize("length, size", [(50, 128 * 44), (30, 128 * 24)])
def test_inertial_encoder_matches_torch(length, size):
  torch.manual_seed(0)
  batch = 3
  ref = TorchInertial(length, dropout=0.0)
  _randomise_batch_norms(ref, 1)
  variables = inertial_variables(ref)
  imu = np.random.default_rng(0).normal(size=(batch, length, 6)).astype(np.float32)
  module = peer_encoders.CmkmInertialEncoder(dropout=0.0)
  updated = _check_against_torch(module, ref, variables, imu,
                                 torch.from_numpy(imu).permute(0, 2, 1), size)
  _assert_stats_equal(updated, inertial_variables(ref)["batch_stats"])


# At T = 50 the output is [B, 256, 1, 1]; at T = 80 it is [B, 256, 1, 3], which checks the
# flattening order too.
@pytest.mark.parametrize("length, size", [(50, 256), (80, 256 * 3)])
def test_hcn_encoder_matches_torch(length, size):
  torch.manual_seed(0)
  batch, joints = 3, 20
  ref = TorchHcn(joints)
  _randomise_batch_norms(ref, 2)
  variables = hcn_variables(ref)
  pose = np.random.default_rng(1).normal(size=(batch, length, joints, 3)).astype(np.float32)
  module = peer_encoders.HcnSkeletonEncoder()
  updated = _check_against_torch(module, ref, variables, pose,
                                 torch.from_numpy(pose).permute(0, 3, 1, 2), size)
  _assert_stats_equal(updated, hcn_variables(ref)["batch_stats"])


def test_projection_head_matches_torch():
  torch.manual_seed(0)
  ref = TorchProjection(96)
  _randomise_batch_norms(ref, 3)
  variables = projection_variables(ref)
  x = np.random.default_rng(2).normal(size=(8, 96)).astype(np.float32)
  module = peer_encoders.ProjectionHead()
  updated = _check_against_torch(module, ref, variables, x, torch.from_numpy(x), 128)
  _assert_stats_equal(updated, projection_variables(ref)["batch_stats"])


def test_fusion_classifier_matches_torch():
  torch.manual_seed(0)
  modalities, sizes = ("inertial", "skeleton"), {"inertial": 40, "skeleton": 24}
  ref = TorchFusion(sizes, modalities, num_classes=27)
  _randomise_batch_norms(ref, 4)
  variables = fusion_variables(ref)
  rng = np.random.default_rng(3)
  features = {m: rng.normal(size=(8, n)).astype(np.float32) for m, n in sizes.items()}
  module = peer_encoders.FusionClassifier(num_classes=27, modalities=modalities)
  updated = _check_against_torch(module, ref, variables, features,
                                 {m: torch.from_numpy(v) for m, v in features.items()}, 27)
  _assert_stats_equal(updated, fusion_variables(ref)["batch_stats"])


def test_dropout_only_in_train_mode():
  module = peer_encoders.CmkmInertialEncoder(num_layers=1, mlp_dim=64)
  imu = jnp.asarray(np.random.default_rng(4).normal(size=(2, 50, 6)), jnp.float32)
  variables = module.init(jax.random.PRNGKey(0), imu)
  run = lambda seed: module.apply(variables, imu, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.PRNGKey(seed)})[0]
  assert not np.allclose(run(1), run(2))
  np.testing.assert_array_equal(module.apply(variables, imu), module.apply(variables, imu))


def test_batch_norm_rejects_single_value_per_channel():
  module = peer_encoders.ProjectionHead()
  x = jnp.ones((1, 16))
  variables = module.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="more than one value per channel"):
    module.apply(variables, x, train=True, mutable=["batch_stats"])


def test_pytorch_default_init():
  params = peer_encoders.CmkmInertialEncoder(num_layers=1).init(
      jax.random.PRNGKey(0), jnp.ones((2, 50, 6)))["params"]
  conv = params["conv1"]                                 # fan_in = 6 * 5
  assert np.abs(conv["kernel"]).max() <= 1 / np.sqrt(30)
  assert 0 < np.abs(conv["bias"]).max() <= 1 / np.sqrt(30)
  attention = params["layer1"]["attention"]
  assert np.abs(attention["query"]["kernel"]).max() <= np.sqrt(6 / (4 * 128))
  assert not np.any(attention["query"]["bias"]) and not np.any(attention["out"]["bias"])
  assert np.abs(attention["out"]["kernel"]).max() <= 1 / np.sqrt(128)


def test_bfloat16_compute():
  module = peer_encoders.HcnSkeletonEncoder(dtype=jnp.bfloat16)
  pose = jnp.ones((2, 50, 20, 3))
  variables = module.init(jax.random.PRNGKey(0), pose)
  out = module.apply(variables, pose)
  assert out.shape == (2, 256) and out.dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32


def test_feature_encoders_registry():
  assert peer_encoders.FEATURE_ENCODERS == {"cmkm_inertial": peer_encoders.CmkmInertialEncoder,
                                            "hcn": peer_encoders.HcnSkeletonEncoder}
