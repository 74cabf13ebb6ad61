"""Real IMU onto a uniform time grid: one method for the pretraining converters and downstream.

Method: polyphase FIR resampling (`scipy.signal.resample_poly`) by the rational ratio of the
rates, the signal extended at both ends by a line fitted to its edge (padtype="line"). Chosen
over a Butterworth low-pass followed by linear interpolation because:
  * anti-aliasing: the Kaiser-windowed FIR cuts at the lower of the two Nyquist frequencies with
    a steep band edge, so content the output cannot represent is removed instead of folded back;
    a low-order IIR set below Nyquist leaves a wide transition band that aliases, and linear
    interpolation attenuates the passband and adds images of its own.
  * phase: the filter is linear-phase and its delay is compensated, so output sample k lies
    exactly at t_k with no phase distortion and no second filtering pass.
  * exactness: for a ratio up/down of small integers the output samples fall exactly on the
    target grid, and equal rates return the input unchanged.
  * edges: extending with the fitted line keeps signals with a large offset (gravity in the
    accelerometer) from ringing towards zero at a recording's ends, as zero padding would.
Irregularly timestamped streams (`resample_stream`, e.g. MM-Fit's watches) are first linearly
interpolated onto a uniform grid near their own rate, a rational multiple of the target rate
and phase-aligned with the target grid, which only removes timing jitter, then resampled as
above. Where the stream has a gap longer than `max_gap_s` the output is NaN (unusable).
"""

from __future__ import annotations

import fractions
import math

import numpy as np
from scipy import signal

# Largest denominator of an intermediate-rate ratio for timestamped streams: keeps the grid they
# are interpolated onto within a few percent of their own rate with short filters.
STREAM_MAX_DENOMINATOR = 10


def grid(duration_s: float, rate_hz: float) -> np.ndarray:
  """t_k = k / rate_hz for every k with t_k <= duration_s (a tolerance of 1e-9 s)."""
  return np.arange(math.floor(duration_s * rate_hz + 1e-9) + 1) / rate_hz


def rate_ratio(source_hz: float, target_hz: float, max_denominator: int = 1000
               ) -> fractions.Fraction:
  """target_hz / source_hz as a fraction of small integers; ValueError if none is close."""
  ratio = fractions.Fraction(target_hz / source_hz).limit_denominator(max_denominator)
  if abs(float(ratio) - target_hz / source_hz) > 1e-6 * target_hz / source_hz:
    raise ValueError(f"cannot resample {source_hz} Hz to {target_hz} Hz with a ratio of small "
                     f"integers (closest {ratio})")
  return ratio


def resample(x: np.ndarray, source_hz: float, target_hz: float) -> np.ndarray:
  """Uniform samples [T, C] at source_hz -> [ceil(T * target / source), C] at target_hz.

  Sample k of the output is at time k / target_hz when input sample j is at j / source_hz.
  Equal rates return x unchanged; a single sample is held (no line to fit).
  """
  if source_hz == target_hz:
    return x
  ratio = rate_ratio(source_hz, target_hz)
  return signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=0,
                              padtype="line" if len(x) > 1 else "edge")


def split_runs(t: np.ndarray, max_gap_s: float) -> list[slice]:
  """Index slices of `t` (sorted) where consecutive entries are at most max_gap_s apart."""
  if len(t) == 0:
    return []
  breaks = np.flatnonzero(np.diff(t) > max_gap_s) + 1
  edges = np.concatenate([[0], breaks, [len(t)]])
  return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def resample_stream(times: np.ndarray, values: np.ndarray, t_out: np.ndarray,
                    max_gap_s: float) -> np.ndarray:
  """A sensor stream at (irregular) sample times -> [N, C] float64 at t_out, NaN where unusable.

  times [T] non-decreasing seconds (samples sharing a timestamp are averaged; rows with a
  non-finite value are dropped); values [T, C]; t_out [N] a uniform grid. Runs are split where
  samples are more than max_gap_s apart; grid times outside every run are NaN. Each run is put
  on a uniform grid at out_rate * p / q (p / q close to its median rate / out_rate, aligned
  with t_out) by linear interpolation and resampled to t_out (module docstring).
  """
  times = np.asarray(times, dtype=np.float64)
  if times.ndim != 1 or not np.isfinite(times).all():
    raise ValueError("sample times must be a finite 1-D array")
  if (np.diff(times) < 0).any():
    raise ValueError("sample times must be non-decreasing")
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 2 or len(values) != len(times):
    raise ValueError(f"values must be [T={len(times)}, C], got {values.shape}")
  if not np.isfinite(values).all():
    keep = np.isfinite(values).all(axis=1)
    times, values = times[keep], values[keep]
  uniq, inverse, counts = np.unique(times, return_inverse=True, return_counts=True)
  if len(uniq) < len(times):
    sums = np.zeros((len(uniq), values.shape[1]))
    np.add.at(sums, inverse.ravel(), values)
    times, values = uniq, sums / counts[:, None]
  t_out = np.asarray(t_out, dtype=np.float64)
  out = np.full((len(t_out), values.shape[1]), np.nan)
  if len(t_out) > 1:
    steps = np.diff(t_out)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9) or steps[0] <= 0:
      raise ValueError("t_out must be a uniform, increasing grid")
    out_rate = 1.0 / steps[0]
  else:
    out_rate = None
  for run in split_runs(times, max_gap_s):
    t_run, v_run = times[run], values[run]
    if len(t_run) < 2:
      continue
    sel = np.flatnonzero((t_out >= t_run[0]) & (t_out <= t_run[-1]))
    if not len(sel):
      continue
    ratio = fractions.Fraction(1)
    if out_rate is not None and len(sel) > 1:
      rate = 1.0 / float(np.median(np.diff(t_run)))
      ratio = fractions.Fraction(rate / out_rate).limit_denominator(STREAM_MAX_DENOMINATOR)
      ratio = max(ratio, fractions.Fraction(1, STREAM_MAX_DENOMINATOR))
    if ratio == 1:
      out[sel] = np.stack([np.interp(t_out[sel], t_run, v) for v in v_run.T], axis=1)
      continue
    mid_rate = out_rate * float(ratio)
    n_mid = math.floor((t_run[-1] - t_out[sel[0]]) * mid_rate + 1e-9) + 1
    t_mid = t_out[sel[0]] + np.arange(n_mid) / mid_rate
    if n_mid < 2:
      continue
    v_mid = np.stack([np.interp(t_mid, t_run, v) for v in v_run.T], axis=1)
    y = signal.resample_poly(v_mid, ratio.denominator, ratio.numerator, axis=0, padtype="line")
    n = min(len(sel), len(y))
    out[sel[:n]] = y[:n]
  return out
