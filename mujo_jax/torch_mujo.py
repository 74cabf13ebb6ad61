"""MuJo encoders in PyTorch, for users of exported checkpoints. Needs torch and
safetensors only (no JAX): copy this file into your project if you like.

    from mujo_jax.torch_mujo import MuJoEncoders
    model = MuJoEncoders.from_export("export_dir")     # model.safetensors + config.json
    z = model.embed_imu(imu)    # imu: [B, 250, 6] float, acc m/s^2 (gravity incl.), gyro rad/s
    z_text = model.embed_text(text_ids, text_len)      # all-MiniLM-L6-v2 token ids [B, 64]

Each `embed_*` returns L2-normalised joint-space embeddings [B, embed_dim]; the
preprocessing facts (rates, window, patching, channel order, units, tokenizer)
are in `model.config["preprocessing"]`. The layers mirror mujo_jax/model.py
exactly (pre-LN blocks, tanh-GELU, LayerNorm eps 1e-6, CLS without position
embedding, bias-free head), so outputs match the JAX model.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

EXPORT_FORMAT = "mujo_jax.torch/1"


class Attention(nn.Module):
  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

  def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    b, n, w = x.shape
    split = lambda t: t.view(b, n, self.num_heads, w // self.num_heads).transpose(1, 2)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
  def __init__(self, width: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm_attention = nn.LayerNorm(width, eps=1e-6)
    self.attention = Attention(width, num_heads)
    self.norm_mlp = nn.LayerNorm(width, eps=1e-6)
    self.mlp_in = nn.Linear(width, mlp_dim)
    self.mlp_out = nn.Linear(mlp_dim, width)

  def forward(self, x, key_mask=None):
    x = x + self.attention(self.norm_attention(x), key_mask)
    return x + self.mlp_out(F.gelu(self.mlp_in(self.norm_mlp(x)), approximate="tanh"))


class Tower(nn.Module):
  """One modality: raw input -> [B, embed_dim] unit vectors."""

  def __init__(self, modality: str, embed_dim: int, width: int, depth: int, num_heads: int,
               mlp_dim: int, num_tokens: int, token_features: int, patch_size: int,
               vocab_size: int):
    super().__init__()
    self.modality, self.patch_size, self.num_tokens = modality, patch_size, num_tokens
    if modality == "text":
      self.token_embedding = nn.Embedding(vocab_size, width)
    else:
      self.input_proj = nn.Linear(token_features, width)
    self.pos_embedding = nn.Parameter(torch.zeros(1, num_tokens, width))
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.blocks = nn.ModuleList(Block(width, num_heads, mlp_dim) for _ in range(depth))
    self.norm_out = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, embed_dim, bias=False)

  def forward(self, inputs: torch.Tensor, text_len: torch.Tensor | None = None) -> torch.Tensor:
    b = inputs.shape[0]
    key_mask = None
    if self.modality == "text":
      tokens = self.token_embedding(inputs[:, 1:].long())   # the tokenizer's [CLS] dropped
      lengths = torch.clamp(text_len.long(), 1, tokens.shape[1] + 1)
      key_mask = torch.arange(tokens.shape[1] + 1, device=inputs.device)[None] < lengths[:, None]
    else:
      patches = inputs.float().reshape(b, inputs.shape[1] // self.patch_size, -1)
      tokens = self.input_proj(patches)
    if tokens.shape[1] != self.num_tokens:
      raise ValueError(f"{self.modality} tower expects {self.num_tokens} tokens, got "
                       f"{tokens.shape[1]} from inputs of shape {tuple(inputs.shape)}")
    x = torch.cat([self.cls.expand(b, -1, -1), tokens + self.pos_embedding], dim=1)
    for block in self.blocks:
      x = block(x, key_mask)
    x = self.head(self.norm_out(x[:, 0]))
    return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=1e-12))


class MuJoEncoders(nn.Module):
  """The exported towers and the logit scale; one `embed_<modality>` per tower."""

  def __init__(self, config: dict):
    super().__init__()
    if config.get("format") != EXPORT_FORMAT:
      raise ValueError(f"config format {config.get('format')!r}, expected {EXPORT_FORMAT!r}")
    self.config = config
    self.towers = nn.ModuleDict({
        m: Tower(m, config["embed_dim"], **config["towers"][m]) for m in config["modalities"]})
    self.log_logit_scale = nn.Parameter(torch.zeros(()))

  @classmethod
  def from_export(cls, directory: str, map_location: str = "cpu") -> "MuJoEncoders":
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
    with open(os.path.join(directory, "config.json")) as f:
      model = cls(json.load(f))
    state = load_file(os.path.join(directory, "model.safetensors"), device=map_location)
    model.load_exported(state)
    return model.eval()

  def load_exported(self, state: dict[str, torch.Tensor]) -> None:
    """Loads a state dict, naming every missing, unexpected or mis-shaped tensor."""
    own = self.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
                   for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
      raise ValueError("model.safetensors does not fit config.json: "
                       f"missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {wrong[:5]}")
    self.load_state_dict(state)

  def logit_scale(self) -> torch.Tensor:
    """exp(log_logit_scale), as the JAX model: training clamps the parameter instead."""
    return self.log_logit_scale.exp()

  @torch.no_grad()
  def clamp_logit_scale_(self) -> None:
    """Clips log_logit_scale to [0, log(logit_scale_max)] in place; call after each update."""
    self.log_logit_scale.clamp_(0.0, math.log(self.config["logit_scale_max"]))

  def _tower(self, modality):
    if modality not in self.towers:
      raise ValueError(f"this export has no {modality} tower; it has {list(self.towers)}")
    return self.towers[modality]

  def embed_imu(self, imu: torch.Tensor) -> torch.Tensor:
    """imu [B, T, 6]: one sensor location's window (see config preprocessing)."""
    return self._tower("imu")(imu)

  def embed_pose(self, pose: torch.Tensor) -> torch.Tensor:
    """pose [B, T, J, 3]: root-relative joints in metres."""
    return self._tower("pose")(pose)

  def embed_video(self, video: torch.Tensor) -> torch.Tensor:
    """video [B, steps, dim]: per-step video features."""
    return self._tower("video")(video)

  def embed_text(self, text_ids: torch.Tensor, text_len: torch.Tensor) -> torch.Tensor:
    """text_ids [B, L] from the tokenizer ([CLS] first, padded); text_len [B] real tokens."""
    return self._tower("text")(text_ids, text_len)
