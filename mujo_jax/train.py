"""The pretraining loop, top to bottom: mesh, data, init, step, checkpoints, evals, logs.

One batch's path: input_pipeline (TFRecord -> numpy) -> to_global_batch (jax.Array
sharded over the mesh's ("data", "fsdp") axes) -> model.MuJo (towers) ->
contrastive.contrastive_loss (global InfoNCE per modality pair) -> optax update.

Parameters and optimizer state are laid out by `config.param_sharding_rules`
(regex -> spec); with `fsdp > 1` the kernels are split over the `fsdp` axis and
GSPMD gathers them inside the step (FSDP / ZeRO-3), while every device still
takes its own slice of the batch.

The step is a pure function `(state, batch) -> (state, metrics)`, compiled ahead
of time with explicit shardings and a donated state, once per distinct set of
modality pairs, all before the first step (multitask strategies pick the pairs
on the host, so a step only runs the towers its pairs need; the other towers'
parameters and optimizer moments stay exactly as they were). A step whose loss
or gradients are not finite changes nothing and is counted in `skipped`; too
many in a row stop the run, and a non-finite state is never saved.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import time
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mujo_jax import checkpoint
from mujo_jax import contrastive
from mujo_jax import evaluation
from mujo_jax import imu_augment
from mujo_jax import input_pipeline
from mujo_jax import metric_writer
from mujo_jax import mixture
from mujo_jax import model as model_lib
from mujo_jax import records
from mujo_jax import storage
from mujo_jax.modalities import INPUT_KEYS
from mujo_jax.modalities import MODALITIES
from mujo_jax.modalities import MODEL_INPUTS


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over all (or the given) devices; `data: -1` takes what fsdp leaves.

  Axes are Auto (GSPMD propagates shardings inside the step; the step's inputs
  and outputs are pinned explicitly).
  """
  devices = list(devices if devices is not None else jax.devices())
  fsdp = int(config.mesh.fsdp)
  data = int(config.mesh.data)
  if data == -1:
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover {len(devices)} devices")
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _axes_size(mesh, axes) -> int:
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return int(np.prod([mesh.shape[a] for a in axes]))


def largest_dim_spec(shape: Sequence[int], axis: str, mesh) -> tuple:
  """Spec splitting the largest dimension divisible by `axis`'s size over it.

  Ties go to the last such dimension; () (replicated) when none divides, e.g. a
  30522-row token embedding on fsdp=4 splits its width instead.
  """
  size = mesh.shape[axis]
  candidates = [d for d in range(len(shape)) if shape[d] % size == 0 and shape[d] >= size]
  if size == 1 or not candidates:
    return ()
  dim = max(candidates, key=lambda d: (shape[d], d))
  return (None,) * dim + (axis,)


def shardings_from_rules(tree, rules: Sequence[tuple[str, tuple | str]], mesh):
  """NamedShardings for every leaf: the first regex matching its "/"-joined path wins.

  A rule's spec is either a PartitionSpec as a tuple (cut to the leaf's rank;
  every sharded dimension must divide by its axes' size, else a ValueError names
  the leaf) or a mesh axis name, meaning `largest_dim_spec` over that axis
  (replicated where no dimension divides).
  """
  compiled = [(re.compile(r), spec) for r, spec in rules]

  def leaf_sharding(path, leaf):
    name = path_str(path)
    shape = np.shape(leaf)
    for regex, spec in compiled:
      if not regex.fullmatch(name):
        continue
      if isinstance(spec, str):
        return NamedSharding(mesh, P(*largest_dim_spec(shape, spec, mesh)))
      spec = tuple(spec)[:len(shape)]
      for dim, axes in enumerate(spec):
        if axes is not None and shape[dim] % _axes_size(mesh, axes):
          raise ValueError(
              f"sharding rule {regex.pattern!r} -> {spec} for parameter {name!r} of shape "
              f"{shape}: dimension {dim} ({shape[dim]}) is not divisible by mesh axes {axes!r} "
              f"of size {_axes_size(mesh, axes)}; use an axis name as the spec to pick a "
              f"dimension that divides, or () to replicate")
      return NamedSharding(mesh, P(*spec))
    raise ValueError(f"no sharding rule matches parameter {name!r}")
  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def enable_compilation_cache(cache_dir: str | None) -> None:
  """Points JAX's persistent compilation cache at `cache_dir` (local or gs://).

  Every program is cached, however fast it compiled or small it is (JAX's
  defaults skip programs that compile in under a second), so a restarted job or
  a second run of one configuration skips XLA compilation.
  """
  if not cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", storage.absolute(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def profile_range(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """config.profile_steps as (first, last) step indices (0-based, inclusive), or None."""
  steps = config.get("profile_steps")
  if steps is None:
    return None
  try:
    first, last = (int(x) for x in steps)
  except (TypeError, ValueError):
    raise ValueError(f"config.profile_steps must be None or (first, last) step numbers, "
                     f"got {steps!r}") from None
  if not 0 <= first <= last:
    raise ValueError(f"config.profile_steps={tuple(steps)} must satisfy 0 <= first <= last")
  return first, last


def make_optimizer(config: ml_collections.ConfigDict):
  """AdamW, warmup + cosine decay, global-norm clipping, no decay where the regex matches.

  Frozen parameters (`model.is_frozen`: `config.model.frozen_towers`) get no decay
  either: their gradients are zero, so they stay exactly as they are.
  """
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=max(config.total_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.end_learning_rate_factor)
  no_decay = re.compile(o.no_decay_regex)
  model_config = config.get("model")
  decay = lambda path: not (no_decay.fullmatch(path) or model_lib.is_frozen(path, model_config))
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: decay(path_str(path)), params)
  tx = optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
  return tx, schedule


def keep_towers(new, old, towers: Sequence[str]):
  """`new` with the subtrees of `towers` taken from `old`, in every params-shaped dict.

  new, old: two pytrees of one structure (e.g. TrainStates). A params-shaped dict
  is one with a key per tower plus "log_logit_scale": the parameters themselves
  and every per-parameter optimizer statistic (Adam's mu and nu), wherever it
  sits in the optimizer state. Other leaves (step counts) come from `new`.
  """
  if not towers:
    return new
  is_params = lambda x: isinstance(x, dict) and "log_logit_scale" in x
  def merge(n, o):
    return {k: (o[k] if k in towers else v) for k, v in n.items()} if is_params(n) else n
  return jax.tree.map(merge, new, old, is_leaf=is_params)


def applied_updates(opt_state) -> jax.Array:
  """How many updates the optimizer has applied: its learning-rate schedule's position.

  Behind the train step when steps were skipped (non-finite), which leave the
  optimizer state as it was.
  """
  counts = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  if len(counts) != 1:
    raise ValueError(f"expected one learning-rate schedule in the optimizer state, "
                     f"found {len(counts)}")
  return counts[0]


class Trainer:
  """Holds the compiled pieces of one configuration; `train()` runs the loop."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None, devices=None):
    self.config = config
    self.workdir = workdir
    self.mesh = make_mesh(config, devices)
    self.model_config = ml_collections.ConfigDict(config.model)
    self.model_config.dtype = model_lib.compute_dtype(config.compute_dtype)
    self.model = self.make_model(self.model_config)
    self.tx, self.schedule = self.make_optimizer(config)
    self.modalities = tuple(m for m in MODALITIES if m in self.model_config.modalities)
    if config.batch_size % self.mesh.size:
      raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                       f"{self.mesh.size} devices")
    enable_compilation_cache(config.get("compilation_cache_dir"))
    self.profile_steps = profile_range(config)
    # The batch is split over every device: fsdp shards parameters, not the data.
    self.data_axes = ("data", "fsdp")
    self.batch_sharding = NamedSharding(self.mesh, P(self.data_axes))
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    self.state_sharding = shardings_from_rules(abstract, config.param_sharding_rules, self.mesh)
    self._steps = {}
    self._nonfinite_check = None

  def make_model(self, model_config: ml_collections.ConfigDict) -> flax.linen.Module:
    return model_lib.MuJo(model_config)

  def make_optimizer(self, config: ml_collections.ConfigDict):
    return make_optimizer(config)

  def make_train_dataset(self, process_batch: int):
    """This process's training batches, endless (an IterDataset): from data.dir, or mixed
    from the sources of data.mixture (mixture.py) when that is set."""
    c = self.config
    if c.data.get("mixture"):
      return mixture.make_mixture_dataset(
          c.data.mixture, batch_size=process_batch, model_config=self.model_config,
          seed=c.seed, make_dataset=self._source_dataset)
    return self._source_dataset(c.data.dir, process_batch, c.seed)

  def _source_dataset(self, data_dir: str, process_batch: int, seed: int):
    c = self.config
    return input_pipeline.make_dataset(
        data_dir, c.data.train_split, batch_size=process_batch, seed=seed,
        augment_config=input_pipeline.AugmentConfig(
            imu_locations=c.data.imu_locations, modality_dropout=c.data.modality_dropout,
            imu_augment=imu_augment.ImuAugmentConfig.from_dict(c.data.get("imu_augment", {}))),
        skip_corrupt=c.data.skip_corrupt, crc_check=c.data.crc_check,
        cache_in_memory=c.data.cache_in_memory, **remote_read_options(c))

  def _init(self, rng) -> TrainState:
    batch = jax.tree.map(jnp.asarray, model_lib.dummy_batch(self.model_config, 2))
    params = self.model.init(rng, batch)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params))

  def init_state(self) -> TrainState:
    """A fresh state; pretrained towers (e.g. towers.text.architecture = "minilm") get
    their checkpoint's weights, placed by the same shardings (every process reads the file)."""
    rng = jax.random.key(self.config.seed)
    state = self._compiled_init(rng)
    params = model_lib.load_pretrained(state.params, self.model_config)
    params = jax.tree.map(
        lambda x, sharding: x if isinstance(x, jax.Array) else jax.make_array_from_callback(
            x.shape, sharding, lambda index, x=x: x[index]),
        params, self.state_sharding.params)
    return state.replace(params=params)

  @functools.cached_property
  def _compiled_init(self):
    """The jitted init, built once: a trainer that inits twice (a second `train()` without a
    checkpoint, an explicit `init_state()` first) compiles it once."""
    return jax.jit(self._init, out_shardings=self.state_sharding)

  def abstract_state(self):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        jax.eval_shape(self._init, jax.random.key(0)), self.state_sharding)

  def abstract_batch(self, batch_size: int):
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
            for k, v in model_lib.dummy_batch(self.model_config, batch_size).items()}

  # The batch fields a train step takes (subclasses add e.g. labels).
  batch_keys = MODEL_INPUTS

  def pair_sets(self) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Every set of modality pairs a step may use; one compiled step each."""
    return contrastive.step_pair_sets(self.config.loss.strategy, self.modalities)

  def pairs_for_step(self, step: int) -> tuple[tuple[str, str], ...]:
    return contrastive.pairs_for_step(self.config.loss.strategy, self.modalities, step,
                                      self.config.seed)

  def towers_in(self, pairs) -> tuple[str, ...]:
    """The enabled modalities that the modality pairs `pairs` use."""
    return tuple(m for m in self.modalities if any(m in p for p in pairs))

  def loss_and_grads(self, params, batch, *, pairs):
    """((loss, (per-pair losses, logit scale)), grads) of one batch for static `pairs`."""
    needed = self.towers_in(pairs)

    def loss_fn(params):
      # FSDP: gather the whole parameters once, up front (their gradients come back
      # to the sharded layout). Left to itself GSPMD shards some activation
      # gradients like the kernels and re-gathers them in full ("involuntary full
      # rematerialization"), which costs more memory than the parameters.
      params = jax.lax.with_sharding_constraint(params, NamedSharding(self.mesh, P()))
      embeddings = self.model.apply({"params": params}, batch, modalities=needed)
      scale = model_lib.logit_scale(params)
      masks = {m: batch["modality_mask"][:, MODALITIES.index(m)] for m in needed}
      total, per_pair = contrastive.contrastive_loss(
          embeddings, masks, pairs, scale, self.mesh, data_axis=self.data_axes,
          chunk_size=self.config.loss.get("chunk_size", 0))
      return total, (per_pair, scale)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  def _train_step(self, state: TrainState, batch, *, pairs):
    needed = self.towers_in(pairs)
    (loss, (per_pair, scale)), grads = self.loss_and_grads(state.params, batch, pairs=pairs)
    updated, metrics = self.apply_gradients(state, grads, loss, needed)
    metrics["logit_scale"] = scale
    metrics.update({f"loss/{k}": v for k, v in per_pair.items()})
    return updated, metrics

  def apply_gradients(self, state: TrainState, grads, loss, needed: Sequence[str],
                      **new_fields):
    """(state after one optimizer step, metrics); the step's update is skipped when the loss
    or a gradient is not finite. `needed`: the towers that took part; `new_fields`: other
    state fields the step computed (e.g. BatchNorm statistics), kept only with the update."""
    grad_norm = optax.global_norm(grads)

    def update(state):
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      params = model_lib.clamp_logit_scale(params, self.model_config)
      # Towers outside this step's pairs took no part: keep their parameters and
      # their Adam moments exactly (no momentum step, no weight decay), as
      # PyTorch's optimizers skip parameters without a gradient. `pairs` is
      # static, so this is a compile-time choice. Adam's step count (and the
      # schedule's) is shared by all parameters and does advance: a tower that
      # sat steps out gets the bias correction of the global count (~1 after a
      # few hundred steps anyway).
      return keep_towers(state.replace(params=params, opt_state=opt_state, **new_fields), state,
                         tuple(m for m in self.modalities if m not in needed))

    # A non-finite loss or gradient (global_norm is NaN/inf if any leaf is)
    # changes nothing: params and opt_state stay, so the schedule (counted in
    # opt_state) does not advance either. state.step does advance: it counts
    # the batches taken, which the data iterator and the checkpoint step follow.
    # A cond rather than a select of old and new: the update stays in place in
    # the donated buffers, where a select has to keep both (copies and passes).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = jax.lax.cond(finite, update, lambda state: state, state)
    clip = self.config.optim.grad_clip_norm
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "clip_factor": jnp.minimum(1.0, clip / grad_norm),
               "grad_norm/logit_scale": jnp.abs(grads["log_logit_scale"]),
               "learning_rate": self.schedule(applied_updates(state.opt_state)),
               "skipped": 1.0 - finite.astype(jnp.float32)}
    metrics.update({f"grad_norm/{m}": optax.global_norm(grads[m]) for m in needed})
    return updated.replace(step=state.step + 1), metrics

  def compiled_step(self, pairs: tuple[tuple[str, str], ...], batch_size: int | None = None):
    """The AOT-compiled step for one pair set (cached)."""
    batch_size = batch_size or self.config.batch_size
    key = (pairs, batch_size)
    if key not in self._steps:
      jitted = jax.jit(functools.partial(self._train_step, pairs=pairs),
                       in_shardings=(self.state_sharding, self.batch_sharding),
                       out_shardings=(self.state_sharding, None), donate_argnums=0)
      self._steps[key] = jitted.lower(self.abstract_state(),
                                      self.abstract_batch(batch_size)).compile()
    return self._steps[key]

  def compiled_nonfinite_check(self):
    """The AOT-compiled state -> {path: any NaN/inf} over params and opt_state (cached)."""
    if self._nonfinite_check is None:
      def nonfinite(state):
        leaves = jax.tree_util.tree_leaves_with_path({"params": state.params,
                                                      "opt_state": state.opt_state})
        return {path_str(p): ~jnp.all(jnp.isfinite(x)) for p, x in leaves
                if jnp.issubdtype(x.dtype, jnp.inexact)}
      self._nonfinite_check = jax.jit(nonfinite, in_shardings=(self.state_sharding,)).lower(
          self.abstract_state()).compile()
    return self._nonfinite_check

  def check_finite(self, state: TrainState, step: int) -> None:
    """Raises FloatingPointError naming the leaves of `state` that hold NaN or inf."""
    bad = [k for k, v in jax.device_get(self.compiled_nonfinite_check()(state)).items()
           if v]
    if bad:
      raise FloatingPointError(
          f"the train state of step {step} has non-finite values in {len(bad)} leaves "
          f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); not saving it")

  @functools.cached_property
  def _embed(self):
    return jax.jit(lambda params, batch: self.model.apply({"params": params}, batch),
                   in_shardings=(self.state_sharding.params, self.batch_sharding))

  def _val_batch(self, local: dict[str, np.ndarray] | None, size: int) -> dict[str, np.ndarray]:
    """A short (or missing: None) val batch padded to `size` rows: model inputs and labels.

    Padding rows have no modality (all-zero modality_mask) and label -1, so no metric
    counts them.
    """
    if local is None:
      local = {**model_lib.dummy_batch(self.model_config, 0), "label": np.zeros((0,), np.int64)}
    return evaluation.pad_batch({k: local[k] for k in MODEL_INPUTS + ("label",)}, size)

  def evaluate(self, state: TrainState) -> dict[str, float]:
    """Validation metrics over the whole val split, computed on the mesh (evaluation.py).

    Retrieval recall@1/@5 for every pair ("val/r{k}/{a}_{b}", "val/r{k}/{a}_to_{b}"),
    same-caption recall for pairs with text ("val/r{k}_caption/..."), and zero-shot
    accuracy by nearest class-name text ("val/zero_shot/{m}_acc", ...). Each process
    feeds its part of every val batch; the embeddings stay sharded on the devices
    and every process gets the same metrics.
    """
    c = self.config
    per_process = c.eval_batch_size // jax.process_count()
    info = records.DatasetInfo.load(c.data.dir)
    num = info.splits[c.data.val_split].num_examples
    num_batches = -(-num // (per_process * jax.process_count()))
    ds = input_pipeline.make_dataset(
        c.data.dir, c.data.val_split, batch_size=per_process, seed=c.seed, shuffle=False,
        num_epochs=1, drop_remainder=False,
        augment_config=input_pipeline.AugmentConfig(imu_locations=c.data.imu_locations),
        crc_check=c.data.crc_check, **remote_read_options(c))
    it = iter(ds)
    axes = self.batch_sharding.spec[0]
    parts = []
    for _ in range(num_batches):
      batch = input_pipeline.to_global_batch(self._val_batch(next(it, None), per_process),
                                             self.mesh, axes)
      parts.append({"embeddings": self._embed(state.params, {k: batch[k] for k in MODEL_INPUTS}),
                    **{k: batch[k] for k in ("modality_mask", INPUT_KEYS["text"], "label")}})
    split = evaluation.concatenate(parts, self.batch_sharding)
    masks = {m: split["modality_mask"][:, MODALITIES.index(m)] for m in self.modalities}
    metrics = evaluation.retrieval_metrics(
        split["embeddings"], masks, contrastive.pairs_for_step("all_pairs", self.modalities, 0),
        self.mesh, text_ids=split[INPUT_KEYS["text"]], ks=(1, 5), batch_axes=axes)
    skip = evaluation.zero_shot_skip_reason(info.tokenizer, info.class_names, self.modalities)
    if skip:
      logging.info("zero-shot accuracy not scored: %s", skip)
    else:
      ids, lengths = evaluation.class_prompt_ids(tuple(info.class_names),
                                                 self.model_config.text_len)
      prompts = evaluation.prompt_batches(
          ids, lengths, model_lib.dummy_batch(self.model_config, per_process),
          jax.process_index(), jax.process_count())
      class_embeddings = evaluation.concatenate(
          [self._embed(state.params, input_pipeline.to_global_batch(b, self.mesh, axes))["text"]
           for b in prompts], self.batch_sharding)
      zero_shot, absent = evaluation.zero_shot_metrics(
          {m: split["embeddings"][m] for m in self.modalities if m != "text"}, masks,
          split["label"], class_embeddings[:len(info.class_names)], info.class_names, self.mesh)
      metrics.update(zero_shot)
      logging.info("zero-shot accuracy (micro; macro over the classes present) %s; classes "
                   "without a labelled val example: %s", "  ".join(
                       f"{k.removeprefix('zero_shot/')} {v:.3f}" for k, v in zero_shot.items()
                       if k.endswith("acc")), absent)
    return {f"val/{k}": v for k, v in metrics.items()}

  def after_evaluation(self, state: TrainState, metrics: dict) -> tuple[TrainState, bool]:
    """(the state to go on from, whether training is finished) after a validation: the place
    for schedules driven by validation metrics and early stopping (peer_train.py)."""
    del metrics
    return state, False

  def train(self, stop_at_step: int | None = None) -> TrainState:
    """Trains to config.total_steps, resuming from the workdir's last checkpoint.

    stop_at_step: stop there as if preempted (checkpoint, then return).
    """
    c = self.config
    check_model_fits_data(self.model_config, records.DatasetInfo.load(c.data.dir), c.data.dir)
    process_batch = c.batch_size // jax.process_count()
    train_ds = self.make_train_dataset(process_batch)
    # Global batches, `device_prefetch` of them already copied to the devices; the
    # wrapper's state is the host pipeline's as of the batch last handed out.
    train_iter = input_pipeline.prefetch_to_device(
        input_pipeline.make_iterator(train_ds, num_workers=c.data.num_workers), self.mesh,
        c.data.device_prefetch, self.data_axes,
        keys=self.batch_keys + (input_pipeline.SKIPPED_CORRUPT,))
    manager = checkpoint.make_manager(self.workdir, max_to_keep=c.keep_checkpoints,
                                      async_save=True)
    latest = manager.latest_step()
    if latest is not None:
      logging.info("resuming from the checkpoint of step %d", latest)
      state = checkpoint.restore(manager, latest, self.abstract_state(), train_iter)
    else:
      state = self.init_state()
    writer = metric_writer.MetricWriter(self.workdir, enabled=jax.process_index() == 0)
    preempted = _PreemptionFlag()
    step = int(state.step)
    if step == 0:
      params = sum(x.size for x in jax.tree.leaves(state.params))
      logging.info("model: %.2fM parameters, compute dtype %s, mesh %s",
                   params / 1e6, self.model_config.dtype, dict(self.mesh.shape))
    # Compile every step this strategy can take, and the check run before saves,
    # before the clock starts: compile errors and memory show up first, and no
    # compilation stalls the loop later (random_pair may draw a pair set late).
    for pairs in self.pair_sets():
      self.compiled_step(pairs)
    self.compiled_nonfinite_check()
    max_skipped = int(c.optim.max_consecutive_nonfinite)
    first_step = step
    skipped_corrupt = jnp.zeros((), jnp.int32)   # corrupt records this run skipped (skip_corrupt)
    timer = _Throughput(c.batch_size)
    pending = []
    consecutive_skipped = 0
    profiler = _StepProfiler(self.profile_steps, self.workdir)

    def save(step, force=False):
      self.check_finite(state, step)
      checkpoint.save(manager, step, state, train_iter, force=force)

    try:
      while step < c.total_steps:
        pairs = self.pairs_for_step(step)
        step_fn = self.compiled_step(pairs)
        batch = next(train_iter)
        skipped_corrupt = skipped_corrupt + batch.pop(input_pipeline.SKIPPED_CORRUPT).sum()
        profiler.before_step(step)
        state, metrics = step_fn(state, batch)
        profiler.after_step(step, state)
        step += 1
        pending.append(metrics)
        if step % c.log_every == 0 or step == c.total_steps:
          rows = jax.device_get(pending)
          pending = []
          summary = summarize_steps(rows)
          summary["examples_per_s"] = timer.rate(step)
          num_corrupt = int(skipped_corrupt)
          summary["data/skipped_corrupt"] = num_corrupt
          writer.write(step, summary)
          input_pipeline.check_corrupt_fraction(
              num_corrupt, (step - first_step) * c.batch_size + num_corrupt,
              c.data.max_corrupt_fraction)
          logging.info("step %d/%d  loss %.4f  %.0f examples/s  ETA %s", step, c.total_steps,
                       summary["loss"], summary["examples_per_s"],
                       _eta(c.total_steps - step, summary["examples_per_s"] / c.batch_size))
          # Checked here, not every step (that would wait for each step): a skipped
          # step changes neither parameters nor optimizer state, so running on a
          # few more before noticing costs time only.
          for row in rows:
            consecutive_skipped = consecutive_skipped + 1 if row["skipped"] else 0
          if summary["skipped"]:
            logging.warning("step %d: %d of the last %d steps skipped (non-finite loss or "
                            "gradients)", step, summary["skipped"], len(rows))
          if consecutive_skipped >= max_skipped:
            raise FloatingPointError(
                f"the last {consecutive_skipped} steps ({step - consecutive_skipped + 1}.."
                f"{step}) had a non-finite loss or gradients and were skipped "
                f"(config.optim.max_consecutive_nonfinite={max_skipped}); the parameters "
                f"are those after step {step - consecutive_skipped}. Check those batches' "
                f"input data, or lower the learning rate")
        finished = False
        if c.eval_every and (step % c.eval_every == 0 or step == c.total_steps):
          val = self.evaluate(state)
          state, finished = self.after_evaluation(state, val)
          writer.write(step, val)
          shown = [k for k in sorted(val) if k.startswith(("val/r1/", "val/r1_caption/"))
                   and "_to_" not in k] or sorted(val)
          if shown:
            logging.info("step %d validation: %s", step, "  ".join(
                f"{k.removeprefix('val/')} {val[k]:.3f}" for k in shown))
          timer.reset(step)
        stop = preempted.reached(step) or step == stop_at_step
        if stop or finished or step % c.checkpoint_every == 0 or step == c.total_steps:
          save(step, force=stop or finished)
        if stop:
          logging.warning("stopped early at step %d (checkpoint saved)", step)
          break
        if finished:
          logging.info("training finished at step %d of %d (early stopping; checkpoint saved)",
                       step, c.total_steps)
          break
      profiler.stop(state)
    finally:
      manager.wait_until_finished()
      manager.close()
      writer.close()
      if hasattr(train_iter, "close"):
        train_iter.close()
    return state


def summarize_steps(rows: Sequence[dict]) -> dict[str, float]:
  """One logged row from the metrics of several steps.

  "skipped" is the number of skipped (non-finite) steps; every other metric is
  the mean over the steps that applied their update (over all steps when none
  did), and over only the steps that have it (grad_norm/<tower> of active towers).
  """
  applied = [r for r in rows if not r["skipped"]] or rows
  summary = {k: float(np.mean([r[k] for r in applied if k in r]))
             for k in set().union(*applied) if k != "skipped"}
  summary["skipped"] = int(sum(r["skipped"] for r in rows))
  return summary


def remote_read_options(config) -> dict[str, int]:
  return {"remote_block_bytes": int(config.data.remote_block_mb * 2**20),
          "remote_cache_bytes": int(config.data.remote_cache_mb * 2**20)}


def check_model_fits_data(model_config, info: records.DatasetInfo, data_dir: str) -> None:
  """Fails before compiling when the model's input shapes are not the dataset's.

  Otherwise a mismatch (e.g. a 20-joint Kinect dataset under the 17-joint default) surfaces
  as a reshape error deep inside a tower.
  """
  m = model_config
  specs = info.array_specs()
  want = {"model.num_joints": (m.num_joints, len(info.joint_names), "joints"),
          "model.imu_len": (m.imu_len, info.imu_window, "IMU samples per window"),
          "model.imu_channels": (m.imu_channels, specs["imu"].shape[-1], "IMU channels"),
          "model.pose_len": (m.pose_len, info.pose_window, "pose frames per window"),
          "model.video_len": (m.video_len, info.video_steps, "video steps"),
          "model.video_dim": (m.video_dim, info.video_dim, "video feature size"),
          "model.text_len": (m.text_len, info.text_len, "text ids"),
          "model.vocab_size": (m.vocab_size, info.vocab_size, "tokenizer vocabulary")}
  owner = {"num_joints": "pose", "pose_len": "pose", "video_len": "video", "video_dim": "video",
           "text_len": "text", "vocab_size": "text"}
  bad = [f"--config.{k}={data} (the dataset has {data} {what}; the config says {model})"
         for k, (model, data, what) in want.items()
         if model != data and owner.get(k.split(".")[1], "imu") in m.modalities]
  if bad:
    raise ValueError(f"the model config does not fit the dataset at {data_dir} "
                     f"({info.name}, skeleton {info.skeleton}); set " + "; ".join(bad))


def _eta(steps_left: int, steps_per_s: float) -> str:
  if steps_per_s <= 0:
    return "?"
  seconds = int(steps_left / steps_per_s)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


class _Throughput:
  """examples/s over the steps since the last log, excluding eval time."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.reset(0)

  def reset(self, step: int):
    self._step, self._time = step, time.perf_counter()

  def rate(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self._step) * self.batch_size / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate


class _StepProfiler:
  """A jax.profiler trace of steps first..last (0-based) into WORKDIR/profile, on process 0.

  Steps are dispatched asynchronously, so the trace stops only once the last
  traced step's state is ready. View with TensorBoard's profile plugin or xprof.
  """

  def __init__(self, steps: tuple[int, int] | None, workdir: str | None):
    self._steps = steps if jax.process_index() == 0 and workdir else None
    self._dir = storage.join(workdir, "profile") if workdir else None
    self._active = False

  def before_step(self, step: int):
    if self._steps and not self._active and self._steps[0] <= step <= self._steps[1]:
      logging.info("profiling steps %d..%d into %s", step, self._steps[1], self._dir)
      jax.profiler.start_trace(storage.absolute(self._dir))
      self._active = True

  def after_step(self, step: int, state):
    if self._active and step >= self._steps[1]:
      self.stop(state)

  def stop(self, state):
    if self._active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._active = False


class _PreemptionFlag:
  """Set by SIGTERM; on several hosts all agree on the step through JAX's sync point."""

  def __init__(self):
    self._flag = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag
