"""Training metrics to three places: console, DIR/metrics.jsonl, TensorBoard events.

clu's and flax's TensorBoard writers import TensorFlow; tensorboardX writes the
same event files with protobuf alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends one JSON object per call to metrics.jsonl and mirrors it to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _scalar(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for key, value in row.items():
      if key != "step":
        self._tb.add_scalar(key, value, global_step=int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _scalar(value) -> float:
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f"metric of shape {value.shape} is not a scalar")
  return float(value)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
