"""The model of the peer methods (supervised, SimCLR, CMC, CMC-CMKM) and of MuJo under their
protocol: one feature encoder per modality, projection heads, and a fusion classifier.

  params[m]["encoder"]     the modality's feature encoder: CMC-CMKM's ("cmkm_inertial", "hcn",
                           peer_encoders.py) or MuJo's transformer tower ("transformer",
                           model.Tower, whose output is its unit-norm embedding)
  params[m]["projection"]  the contrastive projection MLP (config.projection; () = none)
  params["classifier"]     per-modality Linear + BatchNorm + ReLU, concatenated, then Linear
                           (CMC-CMKM's evaluation head), over config.classifier_modalities
  params["log_logit_scale"] MuJo's learned temperature (the fixed-temperature objectives ignore it)

`__call__(batch, modalities, train=..., frozen=..., outputs=...)` returns the requested outputs:
"features" {m: [B, F]} (what evaluation heads and CMKM's mining read), "embeddings"
{m: [B, D]} (projected, L2-normalised: what contrastive losses compare) and "logits" [B, classes].
Encoders of `frozen` modalities run in inference mode (BatchNorm running statistics, no dropout)
and pass no gradient, as a frozen PyTorch module does in the reference.

`preprocess` is the input transformation of the protocol, applied before augmentation and at
evaluation alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mujo_jax import augment
from mujo_jax import model as model_lib
from mujo_jax import peer_encoders
from mujo_jax.modalities import INPUT_KEYS

ENCODERS = tuple(peer_encoders.FEATURE_ENCODERS) + ("transformer",)
OUTPUTS = ("features", "embeddings", "logits")
# config.preprocess.imu / .pose values.
IMU_PREPROCESSING = ("none", "g_deg_s")
POSE_PREPROCESSING = ("none", "normalise")


def preprocess(batch: dict, config: ml_collections.ConfigDict) -> dict:
  """The protocol's input transformation of a batch: IMU units, skeleton normalisation."""
  batch = dict(batch)
  p = config.preprocess
  if p.imu not in IMU_PREPROCESSING or p.pose not in POSE_PREPROCESSING:
    raise ValueError(f"config.model.preprocess: imu={p.imu!r} (known {IMU_PREPROCESSING}), "
                     f"pose={p.pose!r} (known {POSE_PREPROCESSING})")
  if "imu" in config.modalities and p.imu == "g_deg_s":
    batch["imu"] = augment.imu_si_to_g_deg_s(jnp.asarray(batch["imu"], jnp.float32))
  if "pose" in config.modalities and p.pose == "normalise":
    batch["pose"] = augment.normalise_skeleton(jnp.asarray(batch["pose"], jnp.float32))
  return batch


class _ModalityNet(nn.Module):
  """One modality's encoder and projection head."""
  config: ml_collections.ConfigDict
  modality: str

  def setup(self):
    name = self.config.encoders[self.modality]
    if name == "transformer":
      self.encoder = model_lib.Tower(**model_lib.tower_settings(self.config, self.modality))
    elif name in peer_encoders.FEATURE_ENCODERS:
      kwargs = dict(self.config.get("encoder_kwargs", {}).get(self.modality, {}))
      self.encoder = peer_encoders.FEATURE_ENCODERS[name](**kwargs)
    else:
      raise ValueError(f"config.model.encoders.{self.modality}={name!r}; known: {ENCODERS}")
    self.is_tower = name == "transformer"
    if self.config.projection:
      self.projection = peer_encoders.ProjectionHead(tuple(self.config.projection))

  def features(self, x: jax.Array, train: bool) -> jax.Array:
    if self.is_tower:
      return self.encoder(x)
    return self.encoder(x, train=train)

  def embed(self, features: jax.Array, train: bool) -> jax.Array:
    if self.config.projection:
      features = self.projection(features, train=train)
    return model_lib.l2_normalize(features.astype(jnp.float32))


class MultiView(nn.Module):
  """Encoders, projection heads and the fusion classifier of the peer protocol (module doc)."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, batch: dict, modalities: Sequence[str] | None = None, *,
               train: bool = False, frozen: Sequence[str] = (),
               outputs: Sequence[str] = ("embeddings",)) -> dict:
    c = self.config
    enabled = tuple(c.modalities)
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
      raise ValueError(f"unknown outputs {unknown}; known: {OUTPUTS}")
    classifier_modalities = tuple(c.classifier_modalities)
    if modalities is None:
      modalities = classifier_modalities if outputs == ("logits",) else enabled
    modalities = tuple(modalities)
    needed = modalities + tuple(m for m in classifier_modalities
                                if "logits" in outputs and m not in modalities)
    if set(needed) - set(enabled):
      raise ValueError(f"modalities {sorted(set(needed) - set(enabled))} are not enabled "
                       f"(config.model.modalities={enabled})")
    self.param("log_logit_scale", nn.initializers.constant(math.log(c.logit_scale_init)), (),
               jnp.float32)
    nets = {m: _ModalityNet(c, m, name=m) for m in enabled}
    features = {}
    for m in needed:
      x = jnp.asarray(batch[INPUT_KEYS[m]], jnp.float32)
      f = nets[m].features(x, train=train and m not in frozen)
      features[m] = jax.lax.stop_gradient(f) if m in frozen else f
    result = {}
    if "features" in outputs:
      result["features"] = {m: features[m] for m in modalities}
    if "embeddings" in outputs:
      result["embeddings"] = {m: nets[m].embed(features[m], train=train) for m in modalities}
    if "logits" in outputs:
      if not c.num_classes:
        raise ValueError("logits need config.model.num_classes > 0")
      head_inputs = {m: features[m] for m in classifier_modalities}
      if c.classifier_head == "fusion":
        result["logits"] = peer_encoders.FusionClassifier(
            c.num_classes, classifier_modalities, name="classifier")(head_inputs, train=train)
      elif c.classifier_head == "linear":
        result["logits"] = nn.Dense(c.num_classes, name="classifier")(
            jnp.concatenate([head_inputs[m] for m in classifier_modalities], axis=-1))
      else:
        raise ValueError(f"config.model.classifier_head={c.classifier_head!r}; known: "
                         f"('fusion', 'linear')")
    return result


def default_config() -> ml_collections.ConfigDict:
  """The peer model's config: MuJo's model fields (for "transformer" towers) plus the encoders."""
  config = model_lib.default_model_config()
  config.modalities = ("imu", "pose")
  config.encoders = ml_collections.ConfigDict({"imu": "cmkm_inertial", "pose": "hcn"})
  # Fields of a CMC-CMKM encoder that differ from its defaults, per modality (e.g. the reference's
  # multimodal supervised run builds its inertial encoder with kernel_size 3).
  config.encoder_kwargs = ml_collections.ConfigDict({"imu": {}, "pose": {}})
  config.projection = (256, 128)
  config.num_classes = 0
  config.classifier_modalities = ("imu", "pose")
  # "fusion": CMC-CMKM's per-modality Linear(256)+BatchNorm+ReLU, concatenated, then Linear;
  # "linear": one Linear on the concatenated features (its single-modality classifiers).
  config.classifier_head = "fusion"
  config.preprocess = ml_collections.ConfigDict({"imu": "g_deg_s", "pose": "normalise"})
  config.imu_len = 50
  config.pose_len = 50
  config.imu_patch = 5
  config.pose_patch = 5
  config.num_joints = 20
  return config


def init_variables(model: MultiView, rng: jax.Array, batch: dict) -> dict:
  """{"params": ..., "batch_stats": ...} with every head built (embeddings and logits)."""
  outputs = ("features", "embeddings") + (("logits",) if model.config.num_classes else ())
  variables = model.init({"params": rng, "dropout": rng}, batch, outputs=outputs)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
