r"""Validates the virtual IMU simulator against UTD-MHAD's real wearable sensor.

  python -m data_prep.validate_imu_sim --utd_mhad_dir=../shared/data/utd_mhad \
      --out=validation.json

Every UTD-MHAD trial has a Kinect skeleton and a real IMU recording (right
wrist or right thigh, 50 Hz) made at the same time. We simulate that sensor
from the skeleton with `virtual_imu.simulate_imu` and ask two questions:

1. Agreement: per trial, Pearson r between simulated and real acceleration
   magnitude |acc| (specific force, gravity included) and angular-rate
   magnitude |gyr|. Magnitudes do not depend on how the sensor is mounted,
   which neither the skeleton nor the dataset tells us. Both signals are at
   50 Hz and start together; they are compared over their common length, with
   the lag (|lag| <= max_lag_s) that maximises the |acc| correlation.
2. Identification: for each trial, rank its own real recording among all
   recordings of the same subject (~108) by similarity to its simulated signal
   -> top-1 / top-5 accuracy; chance ~1% / ~5%. Similarity of a pair is the
   same lag-searched correlation over the pair's common length (the first
   seconds of the longer one), so recordings of different durations are
   compared on equal footing and duration itself is not used as a cue.

Controls, which should be far worse:
  mispaired    simulated signal of trial i against the real recording of a
               seeded random other trial of the same subject, different action;
               for identification, the rank of that wrong recording.
  nominal_30hz the skeleton taken at its nominal 30 Hz instead of stretched over
               the inertial duration (`utd_mhad.aligned_fps`), so the simulated
               motion runs ~1.6x too fast and ends early.

Settings: smoothing_s = 0.3. Kinect v1 joints jitter by centimetres from frame to frame and
the second derivative amplifies that; agreement rises with the smoothing window up to a plateau,
and we take the smallest window on it, which keeps the most real motion. max_lag_s = 0.3: the
real sensor and the skeleton are offset by a few samples, which the lag search recovers; it
also inflates the controls a little (the best of 2K+1 lags), so they go through it too.
Results are in README.md ("How real the virtual IMU is"); the per-action table is printed and
written as JSON.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence

from absl import app
from absl import flags
import numpy as np
from scipy import stats

from mujo_jax import console
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import utd_mhad
from mujo_jax import storage

SKELETON = "kinect_v1_20"
RATE_HZ = utd_mhad.INERTIAL_HZ
SMOOTHING_S = 0.3
MAX_LAG_S = 0.3
ALIGNMENTS = ("stretch", "nominal_30hz")


def simulate_trial(trial: utd_mhad.Trial, alignment: str = "stretch",
                   smoothing_s: float = SMOOTHING_S, rate_hz: float = RATE_HZ) -> np.ndarray:
  """[T', 6] float64 simulated readings (m/s^2, rad/s) of the trial's real sensor at rate_hz.

  alignment "stretch": the skeleton spans the inertial recording
  (`utd_mhad.aligned_fps`); "nominal_30hz": the skeleton is taken at 30 Hz.
  """
  positions = utd_mhad.load_skeleton(trial)
  if alignment == "stretch":
    n_inertial = len(utd_mhad.load_inertial(trial))
    fps = utd_mhad.aligned_fps(len(positions), n_inertial)
  elif alignment == "nominal_30hz":
    fps = utd_mhad.NOMINAL_SKELETON_FPS
  else:
    raise ValueError(f"unknown alignment {alignment!r}; known: {ALIGNMENTS}")
  try:
    sim = virtual_imu.simulate_imu(positions, fps=fps, skeleton=SKELETON,
                                   locations=[trial.sensor_location], rate_hz=rate_hz,
                                   up=utd_mhad.UP, smoothing_s=smoothing_s)
  except ValueError as e:
    raise ValueError(f"{trial.skeleton_path!r}: {e}") from e
  return sim[0].astype(np.float64)


def magnitudes(readings: np.ndarray) -> np.ndarray:
  """[T, 2]: |acc| and |gyr| of readings [T, 6] (acc xyz, gyr xyz)."""
  readings = np.asarray(readings, dtype=np.float64)
  if readings.ndim != 2 or readings.shape[1] != 6:
    raise ValueError(f"readings must be [T, 6], got shape {readings.shape}")
  return np.stack([np.linalg.norm(readings[:, :3], axis=1),
                   np.linalg.norm(readings[:, 3:], axis=1)], axis=1)


def lagged_r(sim: np.ndarray, real: np.ndarray, max_lag: int) -> np.ndarray:
  """[2K+1, C] Pearson r of sim [T1, C] with real [T2, C] at lags -K..K (K = max_lag samples).

  At lag L, sim[t] is paired with real[t + L] (L > 0: the real signal lags
  behind). Every lag uses the same n = min(T1, T2) - K samples, so the r are
  comparable; a constant window gives NaN.
  """
  if sim.ndim != 2 or real.ndim != 2 or sim.shape[1] != real.shape[1]:
    raise ValueError(f"sim and real must be [T, C] with equal C, got {sim.shape}, {real.shape}")
  if max_lag < 0:
    raise ValueError(f"max_lag must be >= 0, got {max_lag}")
  n = min(len(sim), len(real)) - max_lag
  if n < 3:
    raise ValueError(f"signals of {len(sim)} and {len(real)} samples are too short for a lag "
                     f"search of +-{max_lag} samples")
  lags = np.arange(-max_lag, max_lag + 1)
  window = np.arange(n)
  # [C, 2K+1, n], contiguous along time: pearsonr is ~4x slower on strided input.
  x = np.ascontiguousarray(sim.T[:, np.maximum(0, -lags)[:, None] + window])
  y = np.ascontiguousarray(real.T[:, np.maximum(0, lags)[:, None] + window])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", stats.ConstantInputWarning)
    return stats.pearsonr(x, y, axis=-1).statistic.T


def _best_lag(r_acc: np.ndarray) -> int:
  """Index of the largest r, NaN treated as worst; the middle (lag 0) if all are NaN."""
  if np.isnan(r_acc).all():
    return len(r_acc) // 2
  return int(np.nanargmax(r_acc))


def compare(sim: np.ndarray, real: np.ndarray, rate_hz: float = RATE_HZ,
            max_lag_s: float = MAX_LAG_S) -> dict:
  """Agreement of simulated and real readings, both [T, 6] in m/s^2 and rad/s at rate_hz.

  Returns acc_r / gyr_r: Pearson r of |acc| / |gyr| at the lag lag_s (seconds,
  > 0: the real signal lags) in +-max_lag_s that maximises acc_r; n: samples
  compared.
  """
  max_lag = int(round(max_lag_s * rate_hz))
  return _agreement(magnitudes(sim), magnitudes(real), max_lag, rate_hz)


def _agreement(sim: np.ndarray, real: np.ndarray, max_lag: int, rate_hz: float) -> dict:
  """`compare` on magnitudes [T, 2] (what the workers hand back), lag in samples."""
  r = lagged_r(sim, real, max_lag)
  best = _best_lag(r[:, 0])
  return {"acc_r": float(r[best, 0]), "gyr_r": float(r[best, 1]),
          "lag_s": (best - max_lag) / rate_hz, "n": min(len(sim), len(real)) - max_lag}


def similarity(sims: Sequence[np.ndarray], reals: Sequence[np.ndarray],
               max_lag: int) -> np.ndarray:
  """[2, N, M] lag-searched similarity of magnitudes sims[i] [T, 2] and reals[j] [T, 2].

  [0]: max over lags of the |acc| r; [1]: max over lags of the mean of the
  |acc| and |gyr| r. NaN (constant signals) becomes -inf.
  """
  out = np.empty((2, len(sims), len(reals)))
  for i, s in enumerate(sims):
    for j, r in enumerate(reals):
      rho = lagged_r(s, r, max_lag)
      out[0, i, j] = np.nanmax(rho[:, 0], initial=-np.inf)
      out[1, i, j] = np.nanmax(rho.mean(axis=1), initial=-np.inf)
  return np.nan_to_num(out, nan=-np.inf)


def ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """[N] rank (0 = best) of column targets[i] in row i of scores [N, M]; ties count against."""
  own = scores[np.arange(len(scores)), targets]
  ahead = scores >= own[:, None]
  ahead[np.arange(len(scores)), targets] = False
  return ahead.sum(axis=1)


def mispairing(trials: Sequence[utd_mhad.Trial], seed: int = 0) -> np.ndarray:
  """[N] index of a random other trial of the same subject and a different action, per trial."""
  partners = np.empty(len(trials), dtype=np.int64)
  for i, t in enumerate(trials):
    rng = np.random.default_rng([seed, t.action, t.subject, t.trial])
    candidates = [j for j, u in enumerate(trials)
                  if u.subject == t.subject and u.action != t.action]
    if not candidates:
      raise ValueError(f"trial {t.name} has no trial of the same subject with another action "
                       "to mispair with; validate more than one action")
    partners[i] = candidates[rng.integers(len(candidates))]
  return partners


def _signals(task) -> dict:
  """Worker: magnitudes [T, 2] of the real recording and of both simulations of one trial,
  or {"error": message} if the simulator rejects the skeleton (degenerate Kinect frames)."""
  trial, smoothing_s = task
  out = {"real": magnitudes(utd_mhad.load_inertial(trial))}
  for alignment in ALIGNMENTS:
    try:
      out[alignment] = magnitudes(simulate_trial(trial, alignment, smoothing_s))
    except ValueError as e:
      return {"error": f"{alignment}: {e}"}
  return out


def _match(task) -> np.ndarray:
  """Worker: similarity matrices [2, N, N] of one subject's simulations vs its recordings."""
  sims, reals, max_lag = task
  return similarity(sims, reals, max_lag)


def _median(values) -> float:
  values = np.asarray(values, dtype=np.float64)
  return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def _summary(rows: list[dict]) -> dict:
  """Medians of acc_r, gyr_r, lag_s and top-1 / top-5 rates over per-trial rows."""
  out = {"n": len(rows)}
  for key in ("acc_r", "gyr_r", "lag_s"):
    out[key] = _median([r[key] for r in rows])
  for key in ("rank_acc", "rank_combined"):
    if key in rows[0]:
      rank = np.array([r[key] for r in rows])
      out[f"top1_{key[5:]}"] = float(np.mean(rank < 1))
      out[f"top5_{key[5:]}"] = float(np.mean(rank < 5))
  if "best_same_action" in rows[0]:
    out["top1_same_action"] = float(np.mean([r["best_same_action"] for r in rows]))
  return out


def validate(root: str, trials: Sequence[utd_mhad.Trial] | None = None,
             smoothing_s: float = SMOOTHING_S, max_lag_s: float = MAX_LAG_S, seed: int = 0,
             workers: int | None = None, log=print) -> dict:
  """Agreement, identification and controls (module docstring) over `trials` (default: all
  under root).

  Returns a JSON-ready dict: settings, overall and per-action figures of the
  stretch-aligned simulation, the same for the controls, trials left out
  (the simulator rejected their skeleton) and per-trial rows. Figures are
  medians of per-trial r and lags, and the share of trials whose own (for
  "mispaired": the assigned wrong) recording ranks first / in the first five.
  Deterministic for a seed, whatever `workers`.
  """
  start = time.time()
  trials = sorted(utd_mhad.list_trials(root) if trials is None else trials,
                  key=lambda t: (t.action, t.subject, t.trial))
  if not trials:
    raise ValueError(f"no trials to validate under {root!r}")
  max_lag = int(round(max_lag_s * RATE_HZ))
  progress = lambda msg: log(f"validate_imu_sim: {msg} ({time.time() - start:.0f} s)")
  with multiprocessing.get_context("spawn").Pool(workers or min(2, os.cpu_count() or 1)) as pool:
    signals = []
    for k, s in enumerate(pool.imap(_signals, [(t, smoothing_s) for t in trials], chunksize=8)):
      signals.append(s)
      if (k + 1) % 100 == 0 or k + 1 == len(trials):
        progress(f"simulated {k + 1}/{len(trials)} trials")
    failed = [{"trial": t.name, "error": s["error"]} for t, s in zip(trials, signals)
              if "error" in s]
    for f in failed:
      progress(f"left out {f['trial']}: {f['error']}")
    kept = [k for k, s in enumerate(signals) if "error" not in s]
    if not kept:
      raise ValueError(f"the simulator rejected all {len(trials)} trials: {failed[0]['error']}")
    trials, signals = [trials[k] for k in kept], [signals[k] for k in kept]
    subjects = sorted({t.subject for t in trials})
    members = {s: [i for i, t in enumerate(trials) if t.subject == s] for s in subjects}
    tasks = [([signals[i][alignment] for i in members[s]],
              [signals[i]["real"] for i in members[s]], max_lag)
             for alignment in ALIGNMENTS for s in subjects]
    scores = {}
    for k, matrix in enumerate(pool.imap(_match, tasks)):
      alignment, subject = ALIGNMENTS[k // len(subjects)], subjects[k % len(subjects)]
      scores[alignment, subject] = matrix
      progress(f"ranked {alignment} subject {subject} ({len(members[subject])} trials)")

  rows = _rows(trials, signals, scores, members, mispairing(trials, seed), max_lag)
  actions = sorted({t.action for t in trials})

  def report(name):
    return {"overall": _summary(rows[name]),
            "per_action": {str(a): {"name": utd_mhad.ACTIONS[a - 1],
                                    **_summary([r for r in rows[name] if r["action"] == a])}
                           for a in actions}}

  n_candidates = [len(members[t.subject]) for t in trials]
  return {
      "settings": {"smoothing_s": smoothing_s, "max_lag_s": max_lag_s, "rate_hz": RATE_HZ,
                   "up": list(utd_mhad.UP), "skeleton": SKELETON, "seed": seed,
                   "alignment": "stretch (utd_mhad.aligned_fps)"},
      "n_trials": len(trials),
      "failed": failed,
      "chance": {"top1": _median(1 / np.array(n_candidates)),
                 "top5": _median(5 / np.array(n_candidates))},
      **report("stretch"),
      "controls": {name: report(name) for name in ("mispaired", "nominal_30hz")},
      "per_trial": rows,
      "runtime_s": time.time() - start,
  }


def _rows(trials, signals, scores, members, partner, max_lag) -> dict[str, list[dict]]:
  """Per-trial rows of the stretch simulation and of both controls, in trial order.

  Each row: the trial, the recording it is paired with, `compare`'s figures
  for that pair, the pair's rank among the subject's recordings (by |acc| r
  and by the |acc|/|gyr| mean), the best-ranked recording (by |acc| r) and
  whether it has the paired recording's action.
  """
  rows = {name: [None] * len(trials) for name in (*ALIGNMENTS, "mispaired")}
  for subject, idx in members.items():
    local = {i: k for k, i in enumerate(idx)}
    own = np.arange(len(idx))
    wrong = np.array([local[partner[i]] for i in idx])
    for name, alignment, target in (("stretch", "stretch", own),
                                    ("nominal_30hz", "nominal_30hz", own),
                                    ("mispaired", "stretch", wrong)):
      matrix = scores[alignment, subject]
      rank_acc, rank_combined = ranks(matrix[0], target), ranks(matrix[1], target)
      best = np.argmax(matrix[0], axis=1)
      for k, i in enumerate(idx):
        paired = trials[idx[target[k]]]
        rows[name][i] = {
            "trial": trials[i].name, "action": trials[i].action, "subject": subject,
            "real": paired.name,
            **_agreement(signals[i][alignment], signals[idx[target[k]]]["real"], max_lag,
                         RATE_HZ),
            "rank_acc": int(rank_acc[k]), "rank_combined": int(rank_combined[k]),
            "best": trials[idx[best[k]]].name,
            "best_same_action": bool(trials[idx[best[k]]].action == paired.action)}
  return rows


def format_table(result: dict) -> str:
  """The per-action and overall figures, and the controls, as a text table."""
  head = (f"{'action':<44} {'n':>4} {'acc r':>6} {'gyr r':>6} {'top1':>5} {'top5':>5} "
          f"{'top1c':>5} {'top5c':>5} {'act1':>5} {'lag s':>6}")
  def line(label, s):
    return (f"{label:<44.44} {s['n']:>4} {s['acc_r']:>6.3f} {s['gyr_r']:>6.3f} "
            f"{s['top1_acc']:>5.2f} {s['top5_acc']:>5.2f} {s['top1_combined']:>5.2f} "
            f"{s['top5_combined']:>5.2f} {s['top1_same_action']:>5.2f} {s['lag_s']:>6.2f}")
  lines = [head]
  for a, s in result["per_action"].items():
    lines.append(line(f"a{a} {s['name']}", s))
  lines += [line("overall (median r; top-k rates)", result["overall"]), ""]
  for name, c in result["controls"].items():
    lines.append(line(f"control: {name}", c["overall"]))
  chance = result["chance"]
  lines += ["", f"top1/top5: own recording ranked first / in the first 5 among the subject's "
            f"(|acc| r; c = |acc| and |gyr| r); chance {chance['top1']:.3f} / "
            f"{chance['top5']:.3f}. act1: best-ranked recording has the same action.",
            f"medians of per-trial Pearson r of magnitudes; {result['n_trials']} trials, "
            f"{result['runtime_s']:.0f} s"]
  if result["failed"]:
    lines.append("left out (simulator rejected the skeleton): "
                 + ", ".join(f["trial"] for f in result["failed"]))
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so CLI modules import together cleanly."""
  flags.DEFINE_string("utd_mhad_dir", "../shared/data/utd_mhad", "UTD-MHAD root (Inertial/, "
                      "Skeleton/).")
  flags.DEFINE_string("out", "validation.json", "Where to write the JSON results.")
  flags.DEFINE_float("smoothing_s", SMOOTHING_S, "Simulator Savitzky-Golay window (s).")
  flags.DEFINE_float("max_lag_s", MAX_LAG_S, "Largest lag searched (s).")
  flags.DEFINE_integer("seed", 0, "Seed of the mispaired control.")
  flags.DEFINE_integer("workers", None, "Worker processes (default: up to 2).")
  flags.DEFINE_list("subjects", None, "Only these subjects (default: all).")


def main(argv):
  del argv
  console.setup()
  trials = utd_mhad.list_trials(FLAGS.utd_mhad_dir)
  if FLAGS.subjects:
    keep = {int(s) for s in FLAGS.subjects}
    trials = [t for t in trials if t.subject in keep]
  result = validate(FLAGS.utd_mhad_dir, trials, FLAGS.smoothing_s, FLAGS.max_lag_s, FLAGS.seed,
                    FLAGS.workers)
  print(format_table(result))
  storage.write_json(FLAGS.out, result, indent=1)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
