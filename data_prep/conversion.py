"""Shared machinery of the converters from real sources to the FiMAD record format.

The converters (`convert_fimad`, `convert_utd_mhad`, `convert_mmfit`) differ in how they read
a clip; everything after that lives here, so they agree on time bases, gap handling, windowing,
parallelism and what a failed run leaves behind.

Time base. A clip lives on one time axis in seconds, t = 0 at its first pose frame. Its IMU
grid is t_k = k / imu_rate_hz; window w holds grid samples k = w*W .. (w+1)*W - 1
(W = window_s * imu_rate_hz) and the pose at every (imu_rate_hz / pose_rate_hz)-th of those
samples, so the two modalities of a record cover exactly the same 5 s.

Pose. Sources come at their own, possibly irregular, frame times. `resample_positions` fits a
cubic spline per run of valid frames and evaluates it on the grid; a grid sample is *unusable*
(NaN) when it lies outside every run, i.e. before the first / after the last valid frame or
inside a gap where consecutive valid frames are more than `max_gap_s` apart (a missing joint
is NaN in the source). Nothing is extrapolated. A window is kept only when all its samples
are usable; the others are dropped and counted (never filled with made-up data).
Orientation: `mujo_jax.sources.geometry.to_z_up` turns a source whose world vertical is `up`
so that +z is up, the frame every converter writes (and the virtual IMU's default); records
stay root-relative. Real IMU streams go onto the grid with `mujo_jax.sources.resampling`, the
same resampling the downstream evaluation uses.

Virtual IMU. `simulate_windows` runs `virtual_imu.simulate_imu` once per run of consecutive
kept windows (not per window), with up to `margin_s` of usable context on both sides so the
smoothing filter does not see a window edge as a clip edge.

Running. `convert` maps a top-level `make_clip(task) -> ClipResult` over the clips of every
split in a spawn process pool (`imap`, ordered: output bytes do not depend on the worker
count), streams the windows into `DatasetWriter`, logs progress, and writes
`conversion_report.json` (counts of what was dropped and why, per-clip details) and then
dataset_info.json, which marks the dataset complete. A failed run leaves no
dataset_info.json (a stale one is removed first) and no shard that looks complete.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import interpolate

from data_prep.dataset_writer import DatasetWriter
from mujo_jax import records
from mujo_jax.sim import skeletons
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import errors
from mujo_jax.sources import resampling
from mujo_jax import storage

REPORT_FILENAME = "conversion_report.json"


# Bad input: the message names the clip and the file. The readers in mujo_jax.sources raise the
# same type, so one except clause catches both.
ConversionError = errors.SourceError
clip_error = errors.clip_error


@dataclasses.dataclass
class ClipResult:
  """What `make_clip` returns for one clip.

  examples: example dicts for `records.encode_example`, in window order.
  counts: events to sum over the run, e.g. {"windows": 12, "windows_dropped_pose_gap": 2}.
  details: JSON-able facts about this clip for the report, with its "clip_id" (omitted when
    empty).
  """
  examples: list[dict] = dataclasses.field(default_factory=list)
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  details: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Geometry


def root_relative(pose: np.ndarray, skeleton: str | skeletons.Skeleton) -> np.ndarray:
  """pose [T, J, 3] minus its root joint (pelvis, or the skeleton's alias for it) per frame."""
  skel = skeleton if isinstance(skeleton, skeletons.Skeleton) else skeletons.get_skeleton(skeleton)
  root = skel.index("pelvis")
  return pose - pose[:, root:root + 1]


# ---------------------------------------------------------------------------------------------
# Resampling onto the grid


def _check_times(times: np.ndarray, strict: bool) -> np.ndarray:
  times = np.asarray(times, dtype=np.float64)
  if times.ndim != 1 or not np.isfinite(times).all():
    raise ValueError("frame times must be a finite 1-D array")
  d = np.diff(times)
  if (d <= 0).any() if strict else (d < 0).any():
    raise ValueError("frame times must be increasing")
  return times


def resample_positions(times: np.ndarray, positions: np.ndarray, t_out: np.ndarray,
                       max_gap_s: float) -> np.ndarray:
  """Joint positions at frame times -> [N, J, 3] float64 at t_out, NaN where unusable.

  times [T] strictly increasing seconds; positions [T, J, 3], NaN marks a missing joint.
  Per joint, valid frames are split into runs wherever two consecutive ones are more than
  max_gap_s apart; a cubic spline through each run (of >= 2 frames) gives the values at the
  t_out inside it. Joints that are valid in the same frames share one spline fit.
  """
  times = _check_times(times, strict=True)
  positions = np.asarray(positions, dtype=np.float64)
  t_out = np.asarray(t_out, dtype=np.float64)
  if positions.ndim != 3 or positions.shape[0] != len(times) or positions.shape[2] != 3:
    raise ValueError(f"positions must be [T={len(times)}, J, 3], got {positions.shape}")
  out = np.full((len(t_out),) + positions.shape[1:], np.nan)
  valid = np.isfinite(positions).all(axis=-1)                     # [T, J]
  groups = collections.defaultdict(list)
  for j in range(positions.shape[1]):
    groups[valid[:, j].tobytes()].append(j)
  for joints in groups.values():
    frames = np.flatnonzero(valid[:, joints[0]])
    t_valid = times[frames]
    for run in resampling.split_runs(t_valid, max_gap_s):
      t_run = t_valid[run]
      if len(t_run) < 2:
        continue
      sel = np.flatnonzero((t_out >= t_run[0]) & (t_out <= t_run[-1]))
      if not len(sel):
        continue
      y = positions[frames[run]][:, joints]
      out[sel[:, None], joints] = interpolate.CubicSpline(t_run, y, axis=0)(t_out[sel])
  return out


# ---------------------------------------------------------------------------------------------
# Windows


def pose_step(info: records.DatasetInfo) -> int:
  """IMU grid samples per pose frame (2 for 50 Hz / 25 Hz)."""
  step = info.imu_rate_hz / info.pose_rate_hz
  if abs(step - round(step)) > 1e-9 or step < 1:
    raise ValueError(f"imu_rate_hz {info.imu_rate_hz} must be a whole multiple of "
                     f"pose_rate_hz {info.pose_rate_hz}")
  return int(round(step))


def usable_windows(usable: np.ndarray, window: int) -> np.ndarray:
  """Indexes w of the windows [w*window, (w+1)*window) of a grid whose samples are all usable."""
  n = len(usable) // window
  return np.flatnonzero(np.asarray(usable[:n * window]).reshape(n, window).all(axis=1))


def consecutive(ws: Iterable[int]) -> list[list[int]]:
  """[0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]."""
  runs: list[list[int]] = []
  for w in ws:
    if runs and w == runs[-1][-1] + 1:
      runs[-1].append(int(w))
    else:
      runs.append([int(w)])
  return runs


def simulate_windows(positions: np.ndarray, windows: Sequence[int], window: int,
                     skeleton: str | skeletons.Skeleton, locations: Sequence[str],
                     rate_hz: float, smoothing_s: float, margin_s: float = 1.0
                     ) -> tuple[dict[int, np.ndarray], list[tuple[list[int], str]]]:
  """Virtual IMU of the given windows of a grid clip.

  positions [N, J, 3] on the grid (z up, NaN = unusable). Returns ({w: imu [S, window, 6]
  float32}, [(windows, reason)] for runs the simulator rejected, e.g. degenerate joints).
  """
  usable = np.isfinite(positions).all(axis=(1, 2))
  margin = int(round(margin_s * rate_hz))
  out, failed = {}, []
  for run in consecutive(windows):
    k0, k1 = run[0] * window, (run[-1] + 1) * window
    a, b = k0, k1
    while a > max(0, k0 - margin) and usable[a - 1]:
      a -= 1
    while b < min(len(usable), k1 + margin) and usable[b]:
      b += 1
    try:
      imu = virtual_imu.simulate_imu(positions[a:b], fps=rate_hz, skeleton=skeleton,
                                     locations=locations, rate_hz=rate_hz,
                                     smoothing_s=smoothing_s)
    except ValueError as e:
      failed.append((run, str(e)))
      continue
    for w in run:
      out[w] = imu[:, w * window - a:(w + 1) * window - a]
  return out, failed


def video_window(features: np.ndarray, rate_hz: float, t_start: float, window_s: float,
                 steps: int) -> np.ndarray | None:
  """Video features [T_v, D] at rate_hz -> [steps, D] for the window starting at t_start.

  Feature j covers [j / rate_hz, (j+1) / rate_hz) of the clip's time axis; step i takes the
  feature whose interval holds the step's centre t_start + (i + 0.5) * window_s / steps
  (nearest, never a blend of features). A centre up to one feature period past the end takes
  the last feature; beyond that the window has no video (None).
  """
  centres = t_start + (np.arange(steps) + 0.5) * window_s / steps
  index = np.floor(centres * rate_hz + 1e-9).astype(np.int64)
  if index.min() < 0 or index.max() > len(features):
    return None
  return features[np.minimum(index, len(features) - 1)]


# ---------------------------------------------------------------------------------------------
# Running clips over a pool into a dataset


@dataclasses.dataclass
class Report:
  """The outcome of a conversion: the dataset's info and what happened to its inputs."""
  info: records.DatasetInfo
  counts: collections.Counter
  clips: dict[str, dict[str, Any]]
  settings: dict[str, Any]

  def to_json(self) -> dict[str, Any]:
    return {"dataset": self.info.name, "settings": self.settings,
            "splits": {s: {"num_examples": v.num_examples, "num_clips": v.num_clips}
                       for s, v in sorted(self.info.splits.items())},
            "counts": dict(sorted(self.counts.items())), "clips": self.clips}


def _map(fn: Callable, tasks: Sequence, pool) -> Iterable:
  return pool.imap(fn, tasks, chunksize=1) if pool is not None else map(fn, tasks)


def convert(out_dir: str, info: records.DatasetInfo, splits: Mapping[str, Sequence[Any]],
            make_clip: Callable[[Any], ClipResult], *, workers: int | None = None,
            records_per_shard: int = 256, settings: Mapping[str, Any] | None = None,
            log: Callable[[str], Any] = print, name: str = "convert") -> Report:
  """Runs make_clip over every split's tasks and writes the dataset (module docstring).

  splits: {split name: tasks}, written in sorted split order, tasks in the given order.
  make_clip: a module-level function (it is pickled to spawned workers).
  workers: processes; 0 runs in this process (debugging, tests); None: all CPUs.
  settings: recorded in conversion_report.json; keep it free of run-specific values (paths of
  the output, times) so that two runs of the same conversion give identical bytes.
  """
  start = time.time()
  total = sum(len(t) for t in splits.values())
  if not total:
    raise ConversionError(f"{name}: no clips to convert")
  storage.makedirs(out_dir)
  for stale in (REPORT_FILENAME, records.INFO_FILENAME):
    storage.remove(storage.join(out_dir, stale))
  writer = DatasetWriter(out_dir, info, records_per_shard=records_per_shard)
  counts: collections.Counter = collections.Counter()
  clips: dict[str, dict[str, Any]] = {}
  done, last_log = 0, start

  def stream(split: str, tasks: Sequence[Any], pool):
    nonlocal done, last_log
    for result in _map(make_clip, tasks, pool):
      counts.update(result.counts)
      if result.details:
        clip_id = result.details["clip_id"]
        clips[clip_id] = {k: v for k, v in result.details.items() if k != "clip_id"}
      counts[f"{split}/windows"] += len(result.examples)
      yield from result.examples
      done += 1
      now = time.time()
      if done == total or now - last_log > 10 or done % max(1, total // 10) == 0:
        last_log = now
        windows = sum(v for k, v in counts.items() if k.endswith("/windows"))
        log(f"{name}: {done}/{total} clips, {windows} windows ({now - start:.0f} s)")

  procs = os.cpu_count() if workers is None else workers
  ctx = multiprocessing.get_context("spawn")
  pool = ctx.Pool(procs) if procs and procs > 0 else None
  written: dict[str, records.SplitInfo] = {}
  try:
    for split in sorted(splits):
      try:
        written[split] = writer.write_split(split, stream(split, splits[split], pool))
      except ValueError as e:
        if f"split {split!r} has no examples" in str(e):
          raise ConversionError(
              f"{name}: split {split!r} has no windows: none of its {len(splits[split])} clips "
              f"gave a usable window (counts so far: {dict(sorted(counts.items()))})") from e
        raise
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
  report = Report(info=dataclasses.replace(info, splits=written), counts=counts, clips=clips,
                  settings=dict(settings or {}))
  storage.write_json(storage.join(out_dir, REPORT_FILENAME), report.to_json(), indent=2)
  report.info = writer.finish()
  sizes = {s: v.num_examples for s, v in sorted(report.info.splits.items())}
  dropped = {k: v for k, v in sorted(counts.items()) if v and ("dropped" in k or "skipped" in k)}
  log(f"{name}: wrote {sizes} windows of {total} clips to {out_dir} in "
      f"{time.time() - start:.0f} s; dropped/skipped: {dropped or 'none'}")
  return report
