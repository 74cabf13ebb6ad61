"""Recordings -> labelled IMU windows in the pretrained encoder's input convention.

The IMU tower was pretrained on [250, 6] windows: 5 s at 50 Hz of accelerometer (specific
force incl. gravity, m/s^2) and gyroscope (rad/s). Every dataset is brought there the same way:

1. Cut `Recordings` into segments where subject or recording changes: windows never cross one.
2. Units: g -> m/s^2 (x 9.80665), deg/s -> rad/s.
3. Resample each segment to `rate_hz` (`mujo_jax.sources.resampling.resample`, the resampling
   the pretraining converters use); labels take the label of the nearest source sample.
4. Window: `window_s` long every `stride_s` ("all"), or one centred window per recording
   ("center", for trial datasets such as UTD-MHAD whose recordings are single gestures).
   A recording shorter than a window is dropped (short="drop") or centred and padded as the
   body at rest (short="pad_at_rest": the mean acceleration of its first / last 0.1 s and no
   rotation; zeros would read as free fall). Both are counted.
5. One label per window: a window whose samples all carry one class gets it; a window with
   null (-1) or mixed labels is dropped (labels="drop") or gets an appended "null" class
   (labels="null_class"). Counted.

Per (subject, class) `Windows.tally` keeps what the labels held before these drops (contiguous
segments and their lengths, the windows that touched the class) and how much of the class the kept
windows cover, so that a class that windowing removed can be named and explained
(`mujo_jax.downstream.coverage`).

Missing channels are never zero-filled silently: a dataset without gyroscope stops with an
error unless missing_gyro="zeros", which fills zeros and says so in `Windows.notes` (the
notes go into results.json). Accelerometers without gravity (acc_includes_gravity false) are
used as they are, with a note: the encoder was pretrained with gravity.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from mujo_jax.sources import recording as recording_lib
from mujo_jax.sources import resampling
from mujo_jax import units

REST_S = 0.1
NULL_CLASS = "null"


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  rate_hz: float = 50.0
  window_s: float = 5.0
  stride_s: float = 2.5
  per_recording: str = "all"      # "all" (sliding) | "center" (one window per recording)
  short: str = "drop"             # "drop" | "pad_at_rest"
  labels: str = "drop"            # null / mixed windows: "drop" | "null_class"
  missing_gyro: str = "error"     # "error" | "zeros"

  def __post_init__(self):
    for field, allowed in (("per_recording", ("all", "center")), ("short", ("drop", "pad_at_rest")),
                           ("labels", ("drop", "null_class")), ("missing_gyro", ("error", "zeros"))):
      if getattr(self, field) not in allowed:
        raise ValueError(f"window config {field}={getattr(self, field)!r}; allowed: {allowed}")
    if self.rate_hz <= 0 or self.window_s <= 0 or self.stride_s <= 0:
      raise ValueError(f"window config: rate_hz, window_s, stride_s must be > 0: {self}")

  @property
  def window(self) -> int:
    return int(round(self.rate_hz * self.window_s))

  @property
  def stride(self) -> int:
    return max(1, int(round(self.rate_hz * self.stride_s)))


@dataclasses.dataclass
class ClassTally:
  """One class of one subject at `rate_hz`, counted before windows are dropped.

  segment_samples: lengths of its contiguous labelled runs (within one recording);
  windows_before: candidate windows holding any of its samples (pure or not);
  samples_in_windows: its samples inside at least one kept window of the class.
  """
  segment_samples: list[int] = dataclasses.field(default_factory=list)
  windows_before: int = 0
  samples_in_windows: int = 0


@dataclasses.dataclass
class Windows:
  """x float32 [M, window, 6] (acc m/s^2, gyr rad/s); y, subject, recording int32 [M].

  tally: (subject, class index) -> `ClassTally` of the whole dataset (`take` keeps it whole).
  """
  x: np.ndarray
  y: np.ndarray
  subject: np.ndarray
  recording: np.ndarray
  class_names: tuple[str, ...]
  counts: dict[str, int]
  notes: tuple[str, ...]
  tally: dict[tuple[int, int], ClassTally] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.y)

  def take(self, index: np.ndarray) -> "Windows":
    return dataclasses.replace(self, x=self.x[index], y=self.y[index],
                               subject=self.subject[index], recording=self.recording[index])


def segments(rec: recording_lib.Recordings) -> list[tuple[int, int]]:
  """[start, end) sample ranges of constant (subject, recording)."""
  change = np.flatnonzero((np.diff(rec.subject) != 0) | (np.diff(rec.recording) != 0)) + 1
  bounds = np.concatenate([[0], change, [len(rec.y)]])
  return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def si_signals(rec: recording_lib.Recordings, missing_gyro: str) -> tuple[np.ndarray, list[str]]:
  """[N, 6] float64 acc (m/s^2) and gyro (rad/s), and notes on what was assumed."""
  notes = []
  acc = rec.channels(recording_lib.ACC_CHANNELS).astype(np.float64)
  if rec.acc_unit == "g":
    acc = units.g_to_ms2(acc)
  if not rec.acc_includes_gravity:
    notes.append("accelerometer without gravity, used as is (the encoder was pretrained with "
                 "gravity included)")
  if rec.has_gyroscope:
    gyr = rec.channels(recording_lib.GYR_CHANNELS).astype(np.float64)
    if rec.gyr_unit == "deg/s":
      gyr = np.deg2rad(gyr)
  elif missing_gyro == "zeros":
    gyr = np.zeros_like(acc)
    notes.append("no gyroscope in the data: the encoder's gyroscope channels are zeros "
                 "(missing_gyro=zeros)")
  else:
    raise ValueError(f"{rec.name or 'dataset'} has no gyroscope channels (have "
                     f"{list(rec.channel_names)}); the encoder takes acc + gyro. Set "
                     f"--config.data.window.missing_gyro=zeros to feed zeros explicitly")
  return np.concatenate([acc, gyr], axis=1), notes


def resample(x: np.ndarray, y: np.ndarray, source_hz: float, target_hz: float
             ) -> tuple[np.ndarray, np.ndarray]:
  """One segment: signals [T, C] by `resampling.resample`, labels [T] by nearest sample."""
  if source_hz == target_hz:
    return x, y
  out = resampling.resample(x, source_hz, target_hz)
  nearest = np.minimum(np.round(np.arange(len(out)) * source_hz / target_hz).astype(int),
                       len(y) - 1)
  return out, y[nearest]


def pad_at_rest(x: np.ndarray, y: np.ndarray, window: int, rate_hz: float
                ) -> tuple[np.ndarray, np.ndarray]:
  """Centres a short segment in `window` samples, padded as the body at rest (module doc)."""
  before = (window - len(x)) // 2
  after = window - len(x) - before
  rest = max(1, int(round(REST_S * rate_hz)))
  head = np.concatenate([x[:rest, :3].mean(axis=0), np.zeros(3)])
  tail = np.concatenate([x[-rest:, :3].mean(axis=0), np.zeros(3)])
  x = np.concatenate([np.tile(head, (before, 1)), x, np.tile(tail, (after, 1))])
  y = np.concatenate([np.full(before, y[0]), y, np.full(after, y[-1])])
  return x, y


def label_runs(y: np.ndarray) -> list[tuple[int, int]]:
  """(class, length) of each contiguous run of one label >= 0 in y [T]."""
  if not len(y):
    return []
  change = np.flatnonzero(np.diff(y) != 0) + 1
  bounds = np.concatenate([[0], change, [len(y)]])
  return [(int(y[a]), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:]) if y[a] >= 0]


def make_windows(rec: recording_lib.Recordings, config: WindowConfig) -> Windows:
  """Cuts `rec` into labelled windows (module docstring); counts every drop."""
  signals, notes = si_signals(rec, config.missing_gyro)
  w = config.window
  counts = collections.Counter()
  tally = collections.defaultdict(ClassTally)
  null_class = len(rec.class_names)
  xs, ys, subjects, recs = [], [], [], []
  for start, end in segments(rec):
    counts["recordings"] += 1
    x, y = resample(signals[start:end], rec.y[start:end], rec.sample_rate_hz, config.rate_hz)
    subject = int(rec.subject[start])
    for c, length in label_runs(y):
      tally[subject, c].segment_samples.append(length)
    source_y, offset = y, 0          # the labels before padding, and where they sit after it
    if len(x) < w:
      if config.short == "drop":
        counts["recordings_dropped_short"] += 1
        continue
      offset = (w - len(x)) // 2
      x, y = pad_at_rest(x, y, w, config.rate_hz)
      counts["recordings_padded"] += 1
    if config.per_recording == "center":
      if len(x) > w:
        counts["recordings_cropped"] += 1
      starts = [(len(x) - w) // 2]
    else:
      starts = range(0, len(x) - w + 1, config.stride)
    covered = np.zeros(len(y), bool)
    for s in starts:
      labels = y[s:s + w]
      first = labels[0]
      pure = (labels == first).all()
      for c in ([first] if pure else np.unique(labels)):
        if c >= 0:
          tally[subject, int(c)].windows_before += 1
      if pure and first >= 0:
        label = int(first)
        covered[s:s + w] = True
      else:
        kind = "null" if (labels < 0).all() else "mixed"
        if config.labels == "drop":
          counts[f"windows_dropped_{kind}"] += 1
          continue
        counts[f"windows_{kind}_to_null_class"] += 1
        label = null_class
      xs.append(x[s:s + w].astype(np.float32))
      ys.append(label)
      subjects.append(rec.subject[start])
      recs.append(rec.recording[start])
    covered = covered[offset:offset + len(source_y)]
    for c in np.unique(source_y[covered]):
      tally[subject, int(c)].samples_in_windows += int((source_y[covered] == c).sum())
  if not xs:
    raise ValueError(f"{rec.name or 'dataset'}: no windows of {config.window_s} s survive "
                     f"({dict(counts)})")
  counts["windows"] = len(xs)
  class_names = tuple(rec.class_names)
  if config.labels == "null_class":
    class_names += (NULL_CLASS,)
  return Windows(x=np.stack(xs), y=np.asarray(ys, np.int32),
                 subject=np.asarray(subjects, np.int32), recording=np.asarray(recs, np.int32),
                 class_names=class_names, counts=dict(counts),
                 notes=tuple(rec.notes) + tuple(notes), tally=dict(tally))
