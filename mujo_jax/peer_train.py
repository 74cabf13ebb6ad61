"""The trainer under the peer protocol: one objective per run, chosen by config.loss.objective.

  supervised  cross-entropy of the fusion classifier over config.model.classifier_modalities
              (the encoders trained with it, or frozen: config.freeze, linear evaluation)
  simclr      NT-Xent between two augmented views of one modality (config.loss.modality)
  cmc         InfoNCE between the modalities' embeddings at a fixed temperature
  cmkm        CMC plus cross-modal knowledge mining: top-k extra positives mined with the
              frozen SimCLR encoders of config.loss.mining_from, and intra-modal negatives
  mujo        MuJo's pairwise objective (learned temperature, its multitask strategies)

It is `train.Trainer` (same loop, checkpoints, resume, sharded step and non-finite guard) with
a different model (peer_model.MultiView), state (plus BatchNorm statistics), step and
evaluation. Every contrastive loss is the sharded global one (n_local x N blocks on the mesh).
Augmentations (augment.py) run inside the compiled step, keyed by (seed, step), after the
protocol's preprocessing. The train split is small (UTD-MHAD: 323 trials), so it is read from the
records once and served from memory by a Grain pipeline, optionally cut to a stratified label
fraction (config.data.label_fraction, the semi-supervised rows).

Supervised runs evaluate on the validation split every config.eval_every steps (an epoch) and
keep the state with the best validation accuracy (`best`), as the reference tests its best
checkpoint. Like the reference's Lightning runs they can halve the learning rate when validation
accuracy stalls (config.plateau: PyTorch's ReduceLROnPlateau, through optax's) and stop when the
validation loss has not improved for config.early_stopping_patience evaluations. Both are
driven from the host between epochs; their counters are not checkpointed (a resumed stage
restarts them; the learning-rate scale itself is in the optimizer state and is).
"""

from __future__ import annotations

import functools
import logging
import re

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn import metrics as sk_metrics

from mujo_jax import augment
from mujo_jax import checkpoint
from mujo_jax import contrastive
from mujo_jax import evaluation
from mujo_jax import input_pipeline
from mujo_jax import model as model_lib
from mujo_jax import peer_model
from mujo_jax import ssl_losses
from mujo_jax import train
from mujo_jax.downstream import protocol
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax.modalities import MODALITIES

OBJECTIVES = ("supervised", "simclr", "cmc", "cmkm", "mujo")
# The batch fields the peer models read (no video or text: UTD-MHAD has neither).
INPUTS = (INPUT_KEYS["imu"], INPUT_KEYS["pose"], "modality_mask")


@flax.struct.dataclass
class PeerTrainState(train.TrainState):
  batch_stats: dict


def load_split(config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
  """A whole split as numpy arrays (model inputs and labels), in record order."""
  c = config
  ds = input_pipeline.make_dataset(
      c.data.dir, split, batch_size=256, seed=c.seed, shuffle=False, num_epochs=1,
      drop_remainder=False, process_index=0, process_count=1,
      augment_config=input_pipeline.AugmentConfig(imu_locations=c.data.imu_locations),
      crc_check=c.data.crc_check)
  parts = list(ds)
  if not parts:
    raise ValueError(f"split {split!r} of {c.data.dir} is empty")
  keys = INPUTS + ("label",)
  arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
  arrays["label"] = arrays["label"].astype(np.int32)
  return arrays


class _ArraySource(grain.sources.RandomAccessDataSource):
  """Rows of in-memory arrays as examples."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self._arrays = arrays
    self._len = len(next(iter(arrays.values())))

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    return {k: v[index] for k, v in self._arrays.items()}


class PeerTrainer(train.Trainer):
  """`train.Trainer` with the peer protocol's model, objectives and evaluation (module doc)."""

  batch_keys = INPUTS + ("label",)

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None, devices=None):
    objective = config.loss.objective
    if objective not in OBJECTIVES:
      raise ValueError(f"config.loss.objective={objective!r}; known: {OBJECTIVES}")
    self.objective = objective
    self.frozen = tuple(config.get("freeze", ()))
    super().__init__(config, workdir, devices)
    self.best = None            # (val accuracy, step, host copy of the state) of supervised runs
    plateau = config.get("plateau", ml_collections.ConfigDict({"patience": 0}))
    self._plateau = None
    if plateau.patience:
      # PyTorch reduces after `patience` epochs without improvement *beyond* the best
      # (num_bad_epochs > patience); optax at plateau_count == patience: one more. Fed the
      # validation error, optax's relative tolerance is PyTorch's "max" mode threshold.
      self._plateau = optax.contrib.reduce_on_plateau(
          factor=plateau.factor, patience=plateau.patience + 1, rtol=plateau.threshold)
      self._plateau_state = self._plateau.init(jnp.zeros((), jnp.float32))
    self._early_stopping = int(config.get("early_stopping_patience", 0))
    self._best_val_loss, self._evaluations_since_best = np.inf, 0
    self._mining = self._load_mining_encoders() if objective == "cmkm" else {}
    self._val = None

  # -- model, optimizer, data ------------------------------------------------------------------

  def make_model(self, model_config):
    return peer_model.MultiView(model_config)

  def make_optimizer(self, config):
    tx, schedule = train.make_optimizer(config)
    frozen = tuple(config.get("freeze", ()))
    if frozen:
      # Frozen encoders: no update at all (no weight decay, no moments), like requires_grad=False.
      is_frozen = re.compile(rf"({'|'.join(map(re.escape, frozen))})/encoder/.*")
      labels = lambda params: jax.tree_util.tree_map_with_path(
          lambda path, _: "frozen" if is_frozen.fullmatch(train.path_str(path)) else "train",
          params)
      tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if config.get("plateau", {}).get("patience", 0):
      # The learning rate's plateau factor: a scale in the optimizer state that
      # after_evaluation sets (opt_state[-1].hyperparams["step_size"]).
      tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=1.0))
    return tx, schedule

  def make_train_dataset(self, process_batch: int):
    c = self.config
    arrays = load_split(c, c.data.train_split)
    fraction = float(c.data.get("label_fraction", 1.0))
    if fraction < 1.0:
      keep = protocol.label_fraction(arrays["label"], fraction, c.seed)
      arrays = {k: v[np.sort(keep)] for k, v in arrays.items()}
      logging.info("label fraction %g: %d of the split's examples (seed %d)", fraction,
                   len(keep), c.seed)
    self.train_examples = len(arrays["label"])
    arrays[input_pipeline.SKIPPED_CORRUPT] = np.zeros(len(arrays["label"]), np.int32)
    ds = grain.MapDataset.source(_ArraySource(arrays)).shuffle(seed=c.seed).repeat()
    return ds.batch(process_batch, drop_remainder=True).to_iter_dataset()

  def _init(self, rng) -> PeerTrainState:
    batch = jax.tree.map(jnp.asarray, model_lib.dummy_batch(self.model_config, 2))
    variables = peer_model.init_variables(self.model, rng, batch)
    params = variables["params"]
    return PeerTrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), batch_stats=variables["batch_stats"])

  def init_state(self) -> PeerTrainState:
    """Random init; with config.init_from, the encoders of that workdir's last checkpoint."""
    state = super().init_state()
    source = self.config.get("init_from")
    if not source:
      return state
    _, saved, step = checkpoint.load_state(source)
    params = dict(jax.device_get(state.params))
    stats = dict(jax.device_get(state.batch_stats))
    for m in self.config.init_modalities:
      if m not in saved["params"]:
        raise ValueError(f"config.init_from={source} has no {m!r} encoder "
                         f"(it has {sorted(saved['params'])})")
      params[m] = dict(params[m], encoder=saved["params"][m]["encoder"])
      if m in saved.get("batch_stats", {}):
        stats[m] = dict(stats[m], encoder=saved["batch_stats"][m]["encoder"])
    logging.info("encoders %s from %s (step %d)", tuple(self.config.init_modalities), source,
                 step)
    return jax.device_put(state.replace(params=params, batch_stats=stats),
                          self.state_sharding)

  def _load_mining_encoders(self) -> dict:
    """{modality: (model, variables)} of the frozen SimCLR encoders CMKM mines positives with."""
    mining = {}
    for m in self.modalities:
      source = self.config.loss.mining_from[m]
      config, saved, _ = checkpoint.load_state(source)
      if config.loss.objective != "simclr" or config.loss.modality != m:
        raise ValueError(f"config.loss.mining_from.{m}={source} is a {config.loss.objective} "
                         f"run of {config.loss.get('modality')!r}; CMKM mines {m!r} positives "
                         f"with a SimCLR encoder of {m!r}")
      variables = {"params": saved["params"], "batch_stats": saved["batch_stats"]}
      mining[m] = (peer_model.MultiView(ml_collections.ConfigDict(config.model)),
                   jax.device_put(variables, NamedSharding(self.mesh, P())))
    return mining

  # -- the step --------------------------------------------------------------------------------

  def pair_sets(self):
    if self.objective == "mujo":
      return super().pair_sets()
    return (self._pairs(),)

  def pairs_for_step(self, step: int):
    if self.objective == "mujo":
      return super().pairs_for_step(step)
    return self._pairs()

  def _pairs(self):
    if self.objective == "supervised":
      return tuple((m, m) for m in self.model_config.classifier_modalities)
    if self.objective == "simclr":
      return ((self.config.loss.modality,) * 2,)
    return contrastive.all_pairs(self.modalities)

  def abstract_batch(self, batch_size: int):
    batch = {k: v for k, v in super().abstract_batch(batch_size).items() if k in INPUTS}
    batch["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=self.batch_sharding)
    return batch

  def _augmenter(self, modality: str):
    names = tuple(self.config.augment.get(modality, ()))
    if not names:
      return lambda key, x: x
    params = self.config.augment.get("params", {}).get(modality, {})
    return augment.make_augmenter(modality, names, self.config.augment.probability,
                                  dict(params))

  def _train_step(self, state: PeerTrainState, batch, mining, *, pairs):
    c = self.config
    needed = self.towers_in(pairs)
    # Dropout masks and augmentations draw tens of millions of numbers a step; XLA's "rbg"
    # generator makes them about twice as fast as threefry on CPU.
    key = jax.random.fold_in(jax.random.key(c.seed, impl=c.get("rng_impl", "threefry2x32")),
                             state.step)
    aug_key, dropout_key = jax.random.split(key)
    inputs = peer_model.preprocess({k: batch[k] for k in INPUTS}, self.model_config)
    keys = dict(zip(("a", "b", "imu", "pose"), jax.random.split(aug_key, 4)))

    def apply(params, x, **kwargs):
      out, updates = self.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          frozen=self.frozen, rngs={"dropout": dropout_key}, mutable=["batch_stats"], **kwargs)
      return out, updates["batch_stats"]

    def loss_fn(params):
      if self.objective == "supervised":
        # Training-time augmentation of the supervised runs (none unless configured).
        x = dict(inputs)
        for m in self.model_config.classifier_modalities:
          x[INPUT_KEYS[m]] = self._augmenter(m)(keys[m], inputs[INPUT_KEYS[m]])
        out, stats = apply(params, x, outputs=("logits",))
        labels = batch["label"]
        losses = optax.softmax_cross_entropy_with_integer_labels(
            out["logits"].astype(jnp.float32), jnp.maximum(labels, 0))
        valid = labels >= 0
        loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
        accuracy = jnp.sum(valid & (out["logits"].argmax(-1) == labels)) / jnp.maximum(
            jnp.sum(valid), 1)
        return loss, ({"train_accuracy": accuracy}, stats)
      temperature = c.loss.temperature
      if self.objective == "simclr":
        m = c.loss.modality
        augment_fn = self._augmenter(m)
        x = inputs[INPUT_KEYS[m]]
        views = jnp.concatenate([augment_fn(keys["a"], x), augment_fn(keys["b"], x)])
        out, stats = apply(params, {INPUT_KEYS[m]: views}, modalities=(m,))
        z1, z2 = jnp.split(out["embeddings"][m], 2)
        return ssl_losses.ntxent_loss(z1, z2, temperature, self.mesh, self.data_axes), ({}, stats)
      views = {INPUT_KEYS[m]: self._augmenter(m)(keys[m], inputs[INPUT_KEYS[m]])
               for m in self.modalities}
      out, stats = apply(params, views, modalities=self.modalities)
      z = out["embeddings"]
      if self.objective == "cmkm":
        (a, b), = pairs
        mined = {}
        for m in (a, b):
          model, variables = mining[m]
          f = model.apply(variables, {INPUT_KEYS[m]: views[INPUT_KEYS[m]]}, modalities=(m,),
                          outputs=("features",))["features"][m]
          mined[m] = model_lib.l2_normalize(jax.lax.stop_gradient(f).astype(jnp.float32))
        loss = ssl_losses.cmkm_loss(
            z[a], z[b], mined[a], mined[b], temperature, self.mesh, self.data_axes,
            k=c.loss.cmkm_k, intra_negative_weight=c.loss.intra_negative_weight,
            intra_temperature=c.loss.intra_temperature)
        return loss, ({}, stats)
      scale = (model_lib.logit_scale(params) if self.objective == "mujo"
               else jnp.asarray(1.0 / temperature, jnp.float32))
      masks = {m: batch["modality_mask"][:, MODALITIES.index(m)] for m in self.modalities}
      loss, per_pair = contrastive.contrastive_loss(z, masks, pairs, scale, self.mesh,
                                                    data_axis=self.data_axes)
      return loss, ({"logit_scale": scale, **{f"loss/{k}": v for k, v in per_pair.items()}},
                    stats)

    (loss, (extra, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updated, metrics = self.apply_gradients(state, grads, loss, needed, batch_stats=stats)
    metrics.update(extra)
    return updated, metrics

  def compiled_step(self, pairs, batch_size: int | None = None):
    """The AOT-compiled step for `pairs`, as a function of (state, batch); CMKM's frozen
    mining encoders are a third, replicated argument bound here."""
    batch_size = batch_size or self.config.batch_size
    key = (pairs, batch_size)
    if key not in self._steps:
      models = {m: model for m, (model, _) in self._mining.items()}
      variables = {m: v for m, (_, v) in self._mining.items()}

      def step(state, batch, variables):
        mining = {m: (models[m], variables[m]) for m in models}
        return self._train_step(state, batch, mining, pairs=pairs)

      replicated = NamedSharding(self.mesh, P())
      compiled = jax.jit(
          step, in_shardings=(self.state_sharding, self.batch_sharding,
                              jax.tree.map(lambda _: replicated, variables)),
          out_shardings=(self.state_sharding, None), donate_argnums=0).lower(
              self.abstract_state(), self.abstract_batch(batch_size), variables).compile()
      self._steps[key] = lambda state, batch: compiled(state, batch, variables)
    return self._steps[key]

  # -- evaluation ------------------------------------------------------------------------------

  @functools.cached_property
  def _logits(self):
    def logits(params, batch_stats, batch):
      inputs = peer_model.preprocess(batch, self.model_config)
      return self.model.apply({"params": params, "batch_stats": batch_stats}, inputs,
                              outputs=("logits",))["logits"].astype(jnp.float32)
    return jax.jit(logits)

  def logits(self, state, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Class logits [N, classes] of every row of `arrays` (fixed-size batches: one
    compilation)."""
    size = self.config.eval_batch_size
    inputs = {k: arrays[k] for k in INPUTS}
    n = len(arrays["label"])
    out = []
    for i in range(0, n, size):
      chunk = {k: v[i:i + size] for k, v in inputs.items()}
      got = self._logits(state.params, state.batch_stats, evaluation.pad_batch(chunk, size))
      out.append(np.asarray(got)[:len(chunk["modality_mask"])])
    return np.concatenate(out)

  def predict(self, state, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Predicted classes of every row of `arrays`."""
    return self.logits(state, arrays).argmax(-1)

  def evaluate(self, state) -> dict[str, float]:
    """Validation accuracy, macro F1 and loss (supervised runs); the best state is kept."""
    if self.objective != "supervised":
      return {}
    if self._val is None:
      self._val = load_split(self.config, self.config.data.val_split)
    y = self._val["label"]
    logits = self.logits(state, self._val)
    pred = logits.argmax(-1)
    loss = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))
    accuracy = float(np.mean(pred == y))
    f1 = float(sk_metrics.f1_score(y, pred, average="macro", zero_division=0))
    step = int(state.step)
    if self.best is None or accuracy > self.best[0]:
      self.best = (accuracy, step, jax.device_get(state))
    logging.debug("step %d: val accuracy %.4f, macro F1 %.4f, loss %.4f", step, accuracy, f1,
                  loss)
    return {"val/accuracy": accuracy, "val/macro_f1": f1, "val/loss": loss}

  def after_evaluation(self, state, metrics: dict) -> tuple[PeerTrainState, bool]:
    """The plateau schedule and early stopping of supervised runs (module doc)."""
    if "val/accuracy" not in metrics:
      return state, False
    if self._plateau is not None:
      old = float(self._plateau_state.scale)
      _, self._plateau_state = self._plateau.update(
          jnp.zeros(()), self._plateau_state, value=1.0 - metrics["val/accuracy"])
      scale = float(self._plateau_state.scale)
      metrics["val/learning_rate_scale"] = scale
      if scale != old:
        logging.info("step %d: validation accuracy stalled; learning rate x %g",
                     int(state.step), scale)
        *inner, injected = state.opt_state
        current = injected.hyperparams["step_size"]
        hyperparams = dict(injected.hyperparams, step_size=jax.device_put(
            jnp.asarray(scale, current.dtype), current.sharding))
        state = state.replace(opt_state=(*inner, injected._replace(hyperparams=hyperparams)))
    if self._early_stopping:
      # Lightning's EarlyStopping(monitor="val_loss", mode="min", min_delta=0).
      if metrics["val/loss"] < self._best_val_loss:
        self._best_val_loss, self._evaluations_since_best = metrics["val/loss"], 0
      else:
        self._evaluations_since_best += 1
      if self._evaluations_since_best >= self._early_stopping:
        logging.info("step %d: validation loss has not improved for %d evaluations; stopping",
                     int(state.step), self._evaluations_since_best)
        return state, True
    return state, False
