"""One row of the peer table: a method's stages per seed, its test scores, the paper's figure.

`run(config, workdir)` (config: configs/peers.py) runs every stage of config.stage_order for
every seed, each a `peer_train.PeerTrainer` run in WORKDIR/<stage>/seed_<s> (evaluation stages
once per label fraction: WORKDIR/<stage>/seed_<s>_labels_<f>). Stage references (init_from,
loss.mining_from) name earlier stages and are resolved to those directories. A stage's length is
config.epochs over its training split (after the label fraction). An evaluation stage keeps its
best validation checkpoint, as the reference does, and scores it once on the test split:
accuracy and macro F1, written to its result.json. A finished stage (result.json present) is not
run again, so an interrupted row resumes where it stopped.

Then WORKDIR/results.json and results.md: per evaluation stage and label fraction, mean and
standard deviation over the seeds, with the paper's accuracy beside ours.
"""

from __future__ import annotations

import logging
import math
import time

import jax
import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from mujo_jax import peer_train
from mujo_jax import preflight
from mujo_jax import records
from mujo_jax import storage
from mujo_jax.downstream import protocol

RESULT_FILENAME = "result.json"


def stage_dir(workdir: str, stage: str, seed: int, fraction: float = 1.0) -> str:
  suffix = "" if fraction == 1.0 else f"_labels_{fraction:g}"
  return storage.join(workdir, stage, f"seed_{seed}{suffix}")


def stage_config(config: ml_collections.ConfigDict, stage: str, seed: int, fraction: float,
                 workdir: str, info: records.DatasetInfo) -> ml_collections.ConfigDict:
  """The trainer config of one stage run: seed, label fraction, length, references resolved."""
  c = ml_collections.ConfigDict(config.stages[stage].to_dict())
  c.seed = seed
  c.data.dir = config.data.dir
  c.data.label_fraction = fraction
  c.compilation_cache_dir = config.compilation_cache_dir or storage.join(workdir, "xla_cache")
  if c.init_from in config.stages:
    c.init_from = stage_dir(workdir, c.init_from, seed)
  for m, source in c.loss.mining_from.items():
    if source in config.stages:
      c.loss.mining_from[m] = stage_dir(workdir, source, seed)
  if c.loss.objective == "supervised":
    c.model.num_classes = len(info.class_names)
  num_train = info.splits[c.data.train_split].num_examples
  examples = num_train if fraction == 1.0 else labelled_count(config, fraction, seed)
  # At most the examples there are, and a multiple of the devices (at least one each; a
  # batch larger than a tiny label fraction then repeats examples).
  devices = jax.device_count()
  c.batch_size = max(devices, min(c.batch_size, examples) // devices * devices)
  steps_per_epoch = max(1, math.ceil(examples / c.batch_size))
  c.total_steps = c.epochs * steps_per_epoch
  c.checkpoint_every = c.total_steps
  c.log_every = min(c.log_every, c.total_steps)
  if c.loss.objective == "supervised":
    c.eval_every = steps_per_epoch
  return c


def labelled_count(config, fraction: float, seed: int) -> int:
  """How many training examples a stratified label fraction keeps (peer_train's selection)."""
  first = config.stages[config.stage_order[0]]
  probe = ml_collections.ConfigDict(first.to_dict())
  probe.data.dir = config.data.dir
  labels = peer_train.load_split(probe, probe.data.train_split)["label"]
  return len(protocol.label_fraction(labels, fraction, seed))


def run_stage(c: ml_collections.ConfigDict, directory: str, scored: bool) -> dict:
  """Trains one stage; for an evaluation stage also scores its best state on the test split."""
  preflight.prepare_workdir(c, directory)
  start = time.time()
  trainer = peer_train.PeerTrainer(c, directory)
  state = trainer.train()
  result = {"steps": int(state.step), "planned_steps": int(c.total_steps),
            "batch_size": int(c.batch_size),
            "train_examples": trainer.train_examples,
            "train_seconds": round(time.time() - start, 1)}
  if scored:
    if trainer.best is None:
      raise RuntimeError(f"{directory}: no validation score was recorded (was the stage resumed "
                         f"from a finished checkpoint? delete the directory to rerun it)")
    val_accuracy, best_step, best_state = trainer.best
    test = peer_train.load_split(c, c.data.test_split)
    pred = trainer.predict(best_state, test)
    y = test["label"]
    result.update(
        val_accuracy=val_accuracy, best_step=best_step, test_examples=int(len(y)),
        accuracy=float(sk_metrics.accuracy_score(y, pred)),
        macro_f1=float(sk_metrics.f1_score(y, pred, average="macro", zero_division=0)),
        final_step_accuracy=float(np.mean(trainer.predict(state, test) == y)))
  storage.write_json(storage.join(directory, RESULT_FILENAME), result)
  return result


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Every stage of every seed (module docstring), then results.json and results.md."""
  if jax.process_count() > 1:
    raise ValueError("the peer table runs in one process")
  info = records.DatasetInfo.load(config.data.dir)
  start = time.time()
  results = {}
  for seed in config.seeds:
    for stage in config.stage_order:
      scored = stage in config.evaluations
      for fraction in (config.fractions if scored else (1.0,)):
        directory = stage_dir(workdir, stage, seed, fraction)
        path = storage.join(directory, RESULT_FILENAME)
        if storage.exists(path):
          results[(stage, seed, fraction)] = storage.read_json(path)
          continue
        c = stage_config(config, stage, seed, fraction, workdir, info)
        logging.info("%s: stage %s, seed %d, labels %g: %d steps of batch %d (%.0f s so far)",
                     config.method, stage, seed, fraction, c.total_steps, c.batch_size,
                     time.time() - start)
        result = run_stage(c, directory, scored)
        results[(stage, seed, fraction)] = result
        if scored:
          logging.info("%s %s seed %d labels %g: test accuracy %.4f, macro F1 %.4f (best val "
                       "%.4f at step %d)", config.method, stage, seed, fraction,
                       result["accuracy"], result["macro_f1"], result["val_accuracy"],
                       result["best_step"])
  summary = summarize(config, results, info, time.time() - start)
  storage.write_json(storage.join(workdir, "results.json"), summary)
  storage.write_text(storage.join(workdir, "results.md"), to_markdown(summary))
  logging.info("results:\n%s", to_markdown(summary))
  return summary


def summarize(config, results: dict, info: records.DatasetInfo, seconds: float) -> dict:
  rows = []
  for stage in config.evaluations:
    for fraction in config.fractions:
      runs = [results[(stage, s, fraction)] for s in config.seeds]
      acc = np.array([r["accuracy"] for r in runs]) * 100
      f1 = np.array([r["macro_f1"] for r in runs]) * 100
      rows.append(dict(
          method=config.method, evaluation=stage, description=config.descriptions[stage],
          label_fraction=fraction, seeds=list(config.seeds),
          accuracy_mean=float(acc.mean()), accuracy_std=float(acc.std()),
          macro_f1_mean=float(f1.mean()), macro_f1_std=float(f1.std()),
          accuracy_per_seed=acc.round(2).tolist(), macro_f1_per_seed=f1.round(2).tolist(),
          paper_accuracy=(config.paper[stage] or None) if fraction == 1.0 else None,
          train_examples=[r["train_examples"] for r in runs]))
  stage_seconds = {f"{k[0]}/seed_{k[1]}/labels_{k[2]:g}": v["train_seconds"]
                   for k, v in results.items()}
  return {
      "method": config.method,
      "data": config.data.dir,
      "protocol": ("UTD-MHAD cross-subject: train subjects 1, 3, 5; validation 7 (model "
                   "selection: best validation accuracy); test 2, 4, 6, 8; every trial resampled "
                   "to 50 steps; pretraining saw the training subjects' inertial and skeleton "
                   "data without labels or text; evaluation stages saw their labels"),
      "test_examples": int(info.splits[config.stages[config.evaluations[0]].data.test_split]
                           .num_examples),
      "rows": rows,
      "stages": {k: config.stages[k].loss.to_dict() | {"epochs": config.stages[k].epochs}
                 for k in config.stage_order},
      "seconds": round(seconds, 1),
      "stage_seconds_total": round(sum(v["train_seconds"] for v in results.values()), 1),
      "stage_seconds": stage_seconds,
  }


def to_markdown(summary: dict) -> str:
  lines = [f"# {summary['method']} on UTD-MHAD (CMC-CMKM protocol)", "",
           summary["protocol"] + ".", "",
           "| evaluation | labels | accuracy % (mean +- std) | macro F1 % | paper accuracy % |",
           "|---|---|---|---|---|"]
  for r in summary["rows"]:
    paper = f"{r['paper_accuracy']:.2f}" if r["paper_accuracy"] else "-"
    lines.append(f"| {r['evaluation']}: {r['description']} | {r['label_fraction']:.0%} | "
                 f"{r['accuracy_mean']:.2f} +- {r['accuracy_std']:.2f} | "
                 f"{r['macro_f1_mean']:.2f} +- {r['macro_f1_std']:.2f} | {paper} |")
  lines += ["", f"Seeds {summary['rows'][0]['seeds']}; {summary['test_examples']} test trials; "
            f"{summary['stage_seconds_total']:.0f} s of training and scoring in all (this run: {summary['seconds']:.0f} s)."]
  return "\n".join(lines) + "\n"
