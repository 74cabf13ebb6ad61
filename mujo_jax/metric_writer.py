"""Training metrics to WORKDIR/metrics.jsonl and TensorBoard event files, local or gs://.

clu's and flax's TensorBoard writers import TensorFlow, and tensorboardX's
SummaryWriter writes through POSIX files (gs:// only through another client
library), so the event file is framed here: TFRecord framing (tfrecord.frame) of
`Event` protos, whose generated classes tensorboardX ships. Both files go
through storage.AppendableFile, which appends locally and rewrites the object
on flush remotely; flushes are at most every `flush_secs` (and on close).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping

import numpy as np
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from mujo_jax import storage
from mujo_jax import tfrecord

METRICS_FILENAME = "metrics.jsonl"


class MetricWriter:
  """Appends one JSON object per call to metrics.jsonl and mirrors it to TensorBoard.

  enabled=False (every process but 0 of a multi-host run) writes nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True, flush_secs: float = 10.0):
    self.enabled = enabled
    if not enabled:
      return
    storage.makedirs(workdir)
    self._flush_secs = flush_secs
    self._last_flush = time.monotonic()
    self._jsonl = storage.AppendableFile(storage.join(workdir, METRICS_FILENAME))
    events = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
    self._events = storage.AppendableFile(storage.join(workdir, events))
    self._events.append(tfrecord.frame(
        event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()))
    self._flush()

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _scalar(v) for k, v in metrics.items()})
    self._jsonl.append((json.dumps(row) + "\n").encode())
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                         for k, v in row.items() if k != "step"])
    self._events.append(tfrecord.frame(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary).SerializeToString()))
    if not self._jsonl.remote or time.monotonic() - self._last_flush >= self._flush_secs:
      self._flush()

  def _flush(self) -> None:
    self._jsonl.flush()
    self._events.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self._flush()


def _scalar(value) -> float:
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f"metric of shape {value.shape} is not a scalar")
  return float(value)


def read_metrics(workdir: str) -> list[dict]:
  text = storage.read_text(storage.join(workdir, METRICS_FILENAME))
  return [json.loads(line) for line in text.splitlines() if line.strip()]
