"""metrics.jsonl and the TensorBoard event file that MetricWriter frames itself."""

import os

import pytest
from tensorboardX.proto import event_pb2

from mujo_jax import metric_writer
from mujo_jax import tfrecord


def _events(workdir):
  names = sorted(n for n in os.listdir(workdir) if n.startswith("events.out.tfevents."))
  return [[event_pb2.Event.FromString(p) for _, p in tfrecord.iter_records(str(workdir / n))]
          for n in names]


def test_event_file_is_what_tensorboard_reads(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(5, {"loss": 2.5, "loss/imu_text": 1.25})
  writer.write(10, {"val/r1/imu_text": 0.5})
  writer.close()
  (events,) = _events(tmp_path)   # CRC-checked TFRecord framing
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert scalars == [(5, "loss", 2.5), (5, "loss/imu_text", 1.25), (10, "val/r1/imu_text", 0.5)]


def test_a_resumed_run_appends_rows_and_starts_a_new_event_file(tmp_path):
  for step in (1, 2):
    writer = metric_writer.MetricWriter(str(tmp_path))
    writer.write(step, {"loss": float(step)})
    writer.close()
  assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path))] == [1, 2]
  assert [len(events) for events in _events(tmp_path)] == [2, 2]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path / "w"), enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "w").exists()


def test_non_scalar_metric_is_refused(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  with pytest.raises(ValueError, match="not a scalar"):
    writer.write(1, {"loss": [1.0, 2.0]})
