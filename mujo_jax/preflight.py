"""What a job checks before it writes anything: a mistake stops it with one clear
message and leaves the workdir as it was.

- A misspelled `--config.field=value` is named with the nearest real fields
  (ml_collections raises a KeyError deep inside flag parsing, and suggests only
  names on the same level: not `--config.optim.learning_rate` for
  `--config.learning_rate`).
- A workdir whose checkpoints came from another model (width, depth, towers,
  modalities, ...) is refused before its config.json is rewritten: config.json
  must keep describing the checkpoints beside it, since the export and the
  downstream evaluation rebuild the model from it, and a resumed run would
  otherwise fail deep inside Orbax's restore with a shape error that names no
  config field.
- The dataset is there and of this format version.

Only then is config.json written (`prepare_workdir`).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import flags
from absl import logging

from mujo_jax import storage

CONFIG_FILENAME = "config.json"
JOB_MODES = ("pretrain", "finetune", "peers", "peer_stage")
# config.model fields that choose how a step computes, not which parameters exist:
# free to change when resuming (e.g. turn on remat to fit a larger batch).
MODEL_COMPUTE_OPTIONS = ("dtype", "attention_impl", "remat", "frozen_towers")


class SetupError(ValueError):
  """A job that cannot start as configured; the message says why and what to do."""


# Misspelled --config.field overrides.


def config_overrides(argv: Sequence[str], flag: str = "config") -> list[str]:
  """The dotted field paths that `--config.a.b=value` arguments of argv override."""
  pattern = re.compile(rf"^--?(?:no)?{re.escape(flag)}\.([^=]+)")
  return [m.group(1) for arg in argv if (m := pattern.match(arg))]


def unknown_config_fields(config: ml_collections.ConfigDict, paths: Sequence[str],
                          flag: str = "config") -> list[str]:
  """One message per path that names no field of `config`, with the nearest real ones."""
  return [message for path in paths
          if (message := _unknown_field_message(config, path, flag)) is not None]


def misspelled_config_fields(argv: Sequence[str], flag: str = "config") -> list[str]:
  """unknown_config_fields for a command line: loads the config `--config=...` names.

  [] when every override names a field, or when the config itself cannot be
  loaded (then ml_collections' own error stands).
  """
  argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  spec = None
  for i, arg in enumerate(argv):
    if arg in (f"--{flag}", f"-{flag}") and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith((f"--{flag}=", f"-{flag}=")):
      spec = arg.split("=", 1)[1]
  if spec is None:
    return []
  try:
    config = load_config_file(spec)
  except Exception:  # pylint: disable=broad-except
    return []
  if not isinstance(config, ml_collections.ConfigDict):
    return []
  return unknown_config_fields(config, config_overrides(argv, flag), flag)


def load_config_file(spec: str):
  """get_config(arg) of a "path/to/config.py[:arg]" spec, as ml_collections calls it."""
  path, colon, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_under_check", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if colon else module.get_config()


def _unknown_field_message(config, path: str, flag: str) -> str | None:
  parts = path.split(".")
  node = config
  for i, part in enumerate(parts):
    name = re.sub(r"\[.*\]$", "", part)  # field[0] indexes a list field
    parent = ".".join([flag] + parts[:i])
    if not isinstance(node, (ml_collections.ConfigDict, Mapping)):
      return (f"--{flag}.{path}: {parent} is a value ({type(node).__name__}), "
              f"not a group of fields")
    if name not in node:
      near = nearest_fields(path, _field_paths(config))
      if near:
        hint = "did you mean " + " or ".join(f"--{flag}.{p}" for p in near) + "?"
      else:
        hint = f"its fields: {', '.join(sorted(node.keys()))}"
      return f"--{flag}.{path}: {parent} has no field {name!r}; {hint}"
    node = node[name]
  return None


def nearest_fields(path: str, fields: Sequence[str], cutoff: float = 0.6) -> list[str]:
  """The fields most like `path` (difflib ratio of whole dotted paths, so a field in
  the wrong group is found too): the best and any within 0.05 of it, at most 3."""
  scored = sorted(((difflib.SequenceMatcher(None, path, f).ratio(), f) for f in fields),
                  key=lambda x: -x[0])
  if not scored or scored[0][0] < cutoff:
    return []
  return [f for score, f in scored[:3] if score >= max(cutoff, scored[0][0] - 0.05)]


def _field_paths(node, prefix: str = "") -> list[str]:
  paths = []
  for key, value in node.items():
    paths.append(prefix + key)
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
      paths += _field_paths(value, prefix + key + ".")
  return paths


# Workdirs.


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps with a checkpoint folder in WORKDIR/checkpoints (a half-written one too)."""
  folder = storage.path(storage.join(workdir, "checkpoints"))
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def defines_parameters(field: str) -> bool:
  """Whether a dotted config field decides which parameters a checkpoint holds."""
  parts = field.split(".")
  return parts[0] == "model" and parts[1] not in MODEL_COMPUTE_OPTIONS


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple]:
  """Refuses a workdir whose checkpoints another model or job wrote (SetupError).

  Compares this config with the workdir's config.json, which describes its
  checkpoints. Returns the other fields that differ, {field: (there, here)}:
  those may change on resume (total_steps, log_every, batch_size, ...). Fields
  only one side has (added or removed by a code change) are not compared.
  """
  steps = checkpoint_steps(workdir)
  if not steps:
    return {}
  path = storage.join(workdir, CONFIG_FILENAME)
  try:
    stored = storage.read_json(path)
  except FileNotFoundError:
    logging.warning("%s has checkpoints but no %s: the model config cannot be checked "
                    "against them", workdir, CONFIG_FILENAME)
    return {}
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SetupError(f"{path} is not valid JSON ({e}), so the checkpoints in {workdir} "
                     f"cannot be checked against this config; restore the file, or use "
                     f"a new --workdir") from None
  here = json.loads(config.to_json_best_effort())
  if stored.get("mode") != here.get("mode"):
    raise SetupError(
        f"{workdir} holds the checkpoints of a {stored.get('mode')!r} job "
        f"({_span(steps)}); this config is a {here.get('mode')!r} job: use another "
        f"--workdir. Nothing was written.")
  there_flat, here_flat = flatten(stored), flatten(here)
  changed = {k: (there_flat[k], here_flat[k]) for k in sorted(there_flat.keys() & here_flat.keys())
             if there_flat[k] != here_flat[k]}
  model = {k: v for k, v in changed.items() if defines_parameters(k)}
  if model:
    rows = "\n".join(f"  {k}: {there!r} in {path}, {now!r} in this config"
                     for k, (there, now) in model.items())
    undo = " ".join(_flag(k, there) for k, (there, _) in model.items())
    raise SetupError(
        f"{workdir} holds checkpoints ({_span(steps)}) of another model; the "
        f"fields that decide its parameters differ:\n{rows}\n"
        f"To resume that run, pass its values ({undo}); to train this model, use a new "
        f"--workdir. Nothing was written.")
  return {k: v for k, v in changed.items() if k not in model}


def _span(steps: Sequence[int]) -> str:
  return f"steps {steps[0]}..{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"


def _flag(field: str, value) -> str:
  """--config.field=value as typed in a shell, e.g. "--config.model.modalities=('imu','pose')"."""
  if isinstance(value, list):
    value = "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  text = f"--config.{field}={value}"
  return f'"{text}"' if re.search(r"[^\w@%+=:,./-]", text) else text


# Data.


def ensure_data(config: ml_collections.ConfigDict,
                build_demo: Callable[[str], None] | None = None) -> None:
  """Builds the demo dataset on first use when the config asks for it and the
  caller gave a builder (the application's; this library does not import
  data_prep), then reads its dataset_info.json: a missing or foreign dataset
  stops the job here."""
  from mujo_jax import records  # pylint: disable=import-outside-toplevel
  if (build_demo is not None and config.data.get("build_demo_if_missing", False)
      and not storage.exists(storage.join(config.data.dir, records.INFO_FILENAME))):
    logging.info("no dataset at %s yet: building the demo dataset there first",
                 config.data.dir)
    if jax.process_index() == 0:
      build_demo(config.data.dir)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("demo data built")
  try:
    records.DatasetInfo.load(config.data.dir)
  except (FileNotFoundError, records.RecordFormatError) as e:
    raise SetupError(f"config.data.dir: {e}") from e
  for i, entry in enumerate(config.data.get("mixture") or ()):
    try:
      records.DatasetInfo.load(entry if isinstance(entry, str) else entry[0])
    except (FileNotFoundError, records.RecordFormatError) as e:
      raise SetupError(f"config.data.mixture[{i}]: {e}") from e


# All of it.


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str,
                    build_demo: Callable[[str], None] | None = None) -> None:
  """Checks the job, the workdir and the data; only then writes WORKDIR/config.json.

  Every process checks (so all stop together); process 0 writes. build_demo:
  see ensure_data.
  """
  if config.get("mode") not in JOB_MODES:
    raise SetupError(f"unknown config.mode {config.get('mode')!r}; known: {JOB_MODES}")
  changed = check_workdir(config, workdir)
  if changed:
    logging.info("resuming with settings changed since the last run: %s", "; ".join(
        f"{k} {there!r} -> {now!r}" for k, (there, now) in changed.items()))
  if config.mode in ("pretrain", "peers", "peer_stage"):
    ensure_data(config, build_demo)
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, CONFIG_FILENAME),
                       config.to_json_best_effort(indent=2))
