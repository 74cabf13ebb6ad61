"""Downstream evaluation: how well the IMU encoder recognises activities from few labels.

One run = (mode, label fraction, seed), all scored on the same subject-disjoint test split:
  scratch    the pretraining's IMU tower architecture, random init, + a linear head, trained
  linear     the pretrained IMU tower frozen; a logistic regression (scikit-learn) on its
             embeddings, the inverse regularisation C picked on validation macro F1
  finetune   the pretrained IMU tower + a linear head, all trained (the tower's learning rate
             scaled by train.encoder_lr_factor)
  zero_shot  no labels: each test window gets the class whose text-tower embedding of a
             class prompt is most cosine-similar to its IMU embedding (needs a text tower)
scratch / finetune train with AdamW and cross-entropy for at most train.steps steps, are
evaluated on the validation split every train.eval_every steps and keep the parameters with the
best validation macro F1 (early stop after train.patience evaluations without improvement).
The test split is used once per run, by the kept parameters. Macro F1 averages over the classes
with at least one window in the split scored; a class without test windows is left out, named
and explained (`coverage`), never scored 0.

Entry point: `Evaluator(config, workdir).run()` (via `python -m mujo_jax.main
--config=configs/finetune.py:<dataset>`), which writes results.json / results.md / PNGs
(`report`).
"""

from __future__ import annotations

import functools
import logging
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from mujo_jax import checkpoint
from mujo_jax import evaluation
from mujo_jax import model as model_lib
from mujo_jax.downstream import coverage
from mujo_jax.downstream import datasets
from mujo_jax.downstream import protocol
from mujo_jax.downstream import report
from mujo_jax.downstream import windows as windows_lib
from mujo_jax.modalities import INPUT_KEYS

MODES = ("scratch", "linear", "finetune", "zero_shot")


class Classifier(nn.Module):
  """The IMU tower (params["imu"], as in `model.MuJo`) and a linear head (params["head"]).

  The head sees the unit-norm embedding times sqrt(embed_dim), so that its inputs have
  coordinates of order one whatever the embedding size.
  """
  tower: dict
  num_classes: int

  @nn.compact
  def __call__(self, imu: jax.Array) -> jax.Array:
    embedding = model_lib.Tower(**self.tower, name="imu")(imu)
    return nn.Dense(self.num_classes, name="head", kernel_init=nn.initializers.zeros)(
        embedding * math.sqrt(embedding.shape[-1]))


def config_tuple(config: ml_collections.ConfigDict, field: str, kind) -> tuple:
  """config[field] (a tuple) with each item as `kind`; errors name the config field."""
  value = config[field]
  try:
    return tuple(kind(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"--config.{field}={value!r}: {e}") from e


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Macro F1 over the classes with at least one example in y_true.

  A class without examples has no F1 to average: counted as 0 it would pull the mean down by
  its share of classes whatever the model does (`coverage` names such classes).
  """
  return float(sk_metrics.f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                                   zero_division=0))


def scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
  """Macro F1 (primary) over the classes present in y_true, accuracy, per-class F1 (None for a
  class without test examples: absent, not 0) and the confusion matrix (scikit-learn)."""
  labels = np.arange(num_classes)
  present = np.isin(labels, y_true)
  per_class = sk_metrics.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
  return {
      "macro_f1": macro_f1(y_true, y_pred),
      "accuracy": float(sk_metrics.accuracy_score(y_true, y_pred)),
      "per_class_f1": [round(float(f), 4) if p else None for f, p in zip(per_class, present)],
      "confusion": sk_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
  }


class Evaluator:
  """Loads the dataset and the pretrained model once; `run()` does every requested run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.modes = config_tuple(config, "modes", str)
    unknown = sorted(set(self.modes) - set(MODES))
    if unknown:
      raise ValueError(f"--config.modes: unknown {unknown}; known: {MODES}")
    self.fractions = config_tuple(config, "fractions", float)
    self.seeds = config_tuple(config, "seeds", int)
    self.pretrained_params = None
    self.pretrained_from = None
    model_config = ml_collections.ConfigDict(config.model)
    if config.pretrained:
      pre_config, params, step = checkpoint.load_pretrained(config.pretrained)
      model_config = ml_collections.ConfigDict(pre_config.model)
      self.pretrained_params = params
      self.pretrained_from = f"{config.pretrained} (step {step})"
      logging.info("pretrained model: %s", self.pretrained_from)
    needs = {m for m in self.modes if m in ("linear", "finetune", "zero_shot")}
    if needs and self.pretrained_params is None:
      logging.warning("no --config.pretrained: skipping %s (only scratch runs)", sorted(needs))
      self.modes = tuple(m for m in self.modes if m == "scratch")
    if "zero_shot" in self.modes and "text" not in model_config.modalities:
      logging.warning("the pretrained model has no text tower: skipping zero_shot")
      self.modes = tuple(m for m in self.modes if m != "zero_shot")
    if not self.modes:
      raise ValueError("nothing to run: no mode is possible with this config")
    model_config.dtype = model_lib.compute_dtype(config.compute_dtype)
    self.model_config = model_config

    # The adapter's keyword arguments that the config sets; unset (None) ones keep the
    # adapter's defaults.
    options = {k: v for k, v in config.data.options.items() if v is not None}
    rec = datasets.load(config.dataset, config.data.path, **options)
    self.window_config = windows_lib.WindowConfig(**dict(config.data.window))
    if self.window_config.window != model_config.imu_len:
      raise ValueError(f"windows of {self.window_config.window} samples "
                       f"({config.data.window.window_s} s at {config.data.window.rate_hz} Hz) "
                       f"but the IMU encoder takes {model_config.imu_len}")
    self.windows = windows_lib.make_windows(rec, self.window_config)
    self.recordings = rec
    self.split = protocol.subject_split(
        self.windows.subject, rec.splits, split_seed=config.data.split_seed,
        val_fraction=config.data.val_fraction, test_fraction=config.data.test_fraction)
    self.parts = protocol.split_windows(self.windows, self.split)
    self.class_names = self.windows.class_names
    logging.info("%s: %d windows (%s), classes %d, split %s", config.dataset, len(self.windows),
                 ", ".join(f"{k} {len(v)}" for k, v in self.parts.items()),
                 len(self.class_names), {k: list(v) for k, v in self.split.items()})
    self.coverage, self.coverage_notes = coverage.summarize(self.windows, self.split,
                                                            self.window_config)
    for note in self.coverage_notes:
      logging.warning("%s", note)
    tower = model_lib.tower_settings(model_config, "imu")
    self.classifier = Classifier(tower, len(self.class_names))

  # -- modes -----------------------------------------------------------------------------------

  @functools.cached_property
  def _embed_imu(self):
    model = model_lib.MuJo(self.model_config)
    return jax.jit(lambda params, x: model.apply({"params": params}, {"imu": x},
                                                 modalities=("imu",))["imu"])

  def embed(self, x: np.ndarray) -> np.ndarray:
    """Pretrained IMU embeddings [N, D]."""
    return self._batched(self._embed_imu, self.pretrained_params, x)

  def _batched(self, fn, params, x: np.ndarray) -> np.ndarray:
    """fn(params, x) over x in fixed-size, zero-padded batches: one compilation for any N."""
    b = self.config.eval_batch_size
    out = []
    for i in range(0, len(x), b):
      chunk = x[i:i + b]
      out.append(np.asarray(fn(params, evaluation.pad_batch(chunk, b)))[:len(chunk)])
    return np.concatenate(out)

  def run_linear(self, train_idx: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    emb = {k: self._frozen_embeddings(k) for k in ("train", "val", "test")}
    best = None
    for c in self.config.linear.c_grid:
      clf = linear_model.LogisticRegression(C=c, max_iter=self.config.linear.max_iter,
                                            random_state=seed)
      clf.fit(emb["train"][train_idx], self.parts["train"].y[train_idx])
      val_f1 = macro_f1(self.parts["val"].y, clf.predict(emb["val"]))
      if best is None or val_f1 > best[0]:
        best = (val_f1, c, clf)
    val_f1, c, clf = best
    return clf.predict(emb["test"]), {"val_macro_f1": float(val_f1), "C": c}

  @functools.cache
  def _frozen_embeddings(self, part: str) -> np.ndarray:
    return self.embed(self.parts[part].x)

  def initial_params(self, mode: str, seed: int):
    """Random init (seeded); for finetune the IMU tower is the pretrained one."""
    params = self.classifier.init(jax.random.key(seed), self.parts["train"].x[:1])["params"]
    if mode == "finetune":
      params = dict(params, imu=jax.tree.map(jnp.asarray, self.pretrained_params["imu"]))
    return params

  def run_trained(self, mode: str, train_idx: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """scratch / finetune: AdamW on cross-entropy, model selection on validation macro F1."""
    t = self.config.train
    x_train, y_train = self.parts["train"].x[train_idx], self.parts["train"].y[train_idx]
    params = self.initial_params(mode, seed)
    tx, step_fn, predict = self._compiled(mode)
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    batch = t.batch_size
    order = np.empty(0, np.int64)
    best = (-1.0, params, 0)
    evals_without_gain = 0
    step = 0
    for step in range(1, t.steps + 1):
      if len(order) < batch:
        order = np.concatenate([order] + [rng.permutation(len(y_train))
                                          for _ in range(-(-batch // len(y_train)))])
      idx, order = order[:batch], order[batch:]
      params, opt_state, _ = step_fn(params, opt_state, x_train[idx], y_train[idx])
      if step % t.eval_every == 0 or step == t.steps:
        val_f1 = macro_f1(self.parts["val"].y, self._batched(predict, params, self.parts["val"].x))
        if val_f1 > best[0]:
          best, evals_without_gain = (float(val_f1), params, step), 0
        else:
          evals_without_gain += 1
          if evals_without_gain >= t.patience:
            break
    val_f1, params, best_step = best
    return (self._batched(predict, params, self.parts["test"].x),
            {"val_macro_f1": val_f1, "best_step": best_step, "steps": step})

  @functools.cache
  def _compiled(self, mode: str):
    """(optimizer, jitted train step, jitted predict) of a mode: compiled once per mode."""
    t = self.config.train
    classifier = self.classifier
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, t.steps)
    encoder_lr = t.encoder_lr_factor if mode == "finetune" else 1.0
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {"encoder": optax.adamw(lambda s: schedule(s) * encoder_lr,
                                    weight_decay=t.weight_decay),
             "head": optax.adamw(schedule, weight_decay=t.weight_decay)},
            {"imu": "encoder", "head": "head"}))

    def loss_fn(params, x, y):
      logits = classifier.apply({"params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step_fn(params, opt_state, x, y):
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda params, x: classifier.apply({"params": params}, x).argmax(-1))
    return tx, step_fn, predict

  def run_zero_shot(self) -> tuple[np.ndarray, dict]:
    """Nearest class prompt in the joint space; the null class (if any) is never predicted."""
    from mujo_jax import tokenizer  # pylint: disable=import-outside-toplevel
    names = [n for n in self.recordings.class_names]
    prompts = datasets.class_prompts(self.config.dataset, names, self.config.zero_shot_template)
    ids, lengths = tokenizer.tokenize(tokenizer.load_tokenizer(), prompts, self.model_config.text_len)
    model = model_lib.MuJo(self.model_config)
    class_emb = np.asarray(model.apply({"params": self.pretrained_params},
                                       {INPUT_KEYS["text"]: ids, "text_len": lengths},
                                       modalities=("text",))["text"])
    imu_emb = self._frozen_embeddings("test")
    return (imu_emb @ class_emb.T).argmax(axis=1), {"prompts": prompts}

  # -- the whole evaluation --------------------------------------------------------------------

  def run(self) -> dict:
    runs = [(m, f, s) for m in self.modes if m != "zero_shot"
            for f in self.fractions for s in self.seeds]
    if "zero_shot" in self.modes:
      runs.append(("zero_shot", 0.0, 0))
    rows = []
    start = time.time()
    for i, (mode, fraction, seed) in enumerate(runs, 1):
      t0 = time.time()
      train_idx = np.arange(0)
      if mode != "zero_shot":
        train_idx = protocol.label_fraction(self.parts["train"].y, fraction, seed)
      if mode == "linear":
        pred, extra = self.run_linear(train_idx, seed)
      elif mode == "zero_shot":
        pred, extra = self.run_zero_shot()
      else:
        pred, extra = self.run_trained(mode, train_idx, seed)
      row = dict(mode=mode, fraction=fraction, seed=seed, train_windows=int(len(train_idx)),
                 **scores(self.parts["test"].y, pred, len(self.class_names)), **extra,
                 seconds=round(time.time() - t0, 1))
      rows.append(row)
      elapsed = time.time() - start
      logging.info("[%d/%d] %-9s fraction %-5g seed %d: test macro F1 %.3f  accuracy %.3f  "
                   "(val %.3f, %d train windows, %.0f s; ETA %.0f s)", i, len(runs), mode,
                   fraction, seed, row["macro_f1"], row["accuracy"],
                   row.get("val_macro_f1", float("nan")), len(train_idx), row["seconds"],
                   elapsed / i * (len(runs) - i))
    results = {
        "dataset": self.config.dataset,
        "data_path": self.config.data.path,
        "pretrained": self.pretrained_from,
        "class_names": list(self.class_names),
        "split": {k: list(v) for k, v in self.split.items()},
        "windows": {k: len(v) for k, v in self.parts.items()},
        "window_counts": self.windows.counts,
        **self.coverage,
        "notes": list(self.windows.notes) + self.coverage_notes,
        "rows": rows,
    }
    report.write_all(self.workdir, results)
    return results
