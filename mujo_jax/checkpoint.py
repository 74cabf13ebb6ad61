"""Pretraining checkpoints: where they live, the one Orbax manager, and restoring the model.

A checkpoint of step N is WORKDIR/checkpoints/N with two items: "state" (the TrainState:
step, params, opt_state) and "data" (the Grain iterator's position, so a resumed run reads
on where it stopped). The trainer saves and restores both; `load_pretrained` (export,
downstream evaluation) restores only the parameters. Both go through `make_manager`, which
registers a handler for each item, so a restore of "state" alone knows what "data" is and
leaves it unread without a warning.
"""

from __future__ import annotations

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mujo_jax import model as model_lib
from mujo_jax import storage

STATE = "state"
DATA = "data"


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, as an absolute path (local) or a gs:// URL."""
  return storage.absolute(storage.join(workdir, "checkpoints"))


def make_manager(workdir: str, max_to_keep: int | None = None,
                 async_save: bool = False) -> ocp.CheckpointManager:
  """The Orbax manager of WORKDIR/checkpoints, with the handlers of both items.

  max_to_keep: older steps are deleted after a save (None: keep all).
  async_save: saves return once the arrays are copied off the devices (the trainer);
    call `wait_until_finished()` before reading them back.
  A save cut short by a kill leaves a temporary folder (never restored); it is removed when
  the manager starts rather than when its step is saved again.
  """
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True),
      item_handlers={STATE: ocp.StandardCheckpointHandler(),
                     DATA: grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_iter=None,
         force: bool = False) -> None:
  """Saves `state` (and the data iterator's position, if given) as step `step`."""
  items = {STATE: ocp.args.StandardSave(state)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iter=None):
  """The state of step `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings).

  Given `data_iter`, its position is restored in place too.
  """
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE]


def load_state(workdir: str, step: int | None = None):
  """(config, the whole saved train state as numpy, step) of a workdir's checkpoint (default:
  latest), restored onto one local device whatever mesh it was saved from."""
  config_path = storage.join(workdir, "config.json")
  try:
    config = ml_collections.ConfigDict(storage.read_json(config_path))
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{config_path} not found: is {workdir} a mujo_jax training workdir?") from None
  manager = make_manager(workdir)
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(
          f"no checkpoint of step {step} in {workdir}/checkpoints; have {sorted(steps)}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          manager.item_metadata(step)[STATE])
    state = jax.tree.map(np.asarray, restore(manager, step, target))
  finally:
    manager.close()
  return config, state, step


def load_pretrained(workdir: str, step: int | None = None):
  """(config, params as numpy, step) of a pretraining workdir's checkpoint (default: latest).

  Restores onto one local device, whatever mesh the checkpoint was saved from, and checks
  the parameters against the shapes the workdir's config.json implies, naming the first
  mismatches.
  """
  config, state, step = load_state(workdir, step)
  params = state["params"]
  model_config = config.model
  expected = jax.eval_shape(
      lambda: model_lib.MuJo(model_config).init(
          jax.random.key(0), model_lib.dummy_batch(model_config, 1))["params"])
  keystr = jax.tree_util.keystr
  got = {keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  if got != want:
    diffs = sorted({k for k in set(got) | set(want) if got.get(k) != want.get(k)})
    raise ValueError(
        f"checkpoint of step {step} in {workdir} does not match its config.json (incompatible "
        f"config?): " + "; ".join(f"{k}: checkpoint {got.get(k)}, config {want.get(k)}"
                                  for k in diffs[:5]))
  return config, params, step
