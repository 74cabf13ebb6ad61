r"""How far apart a pretrained IMU tower puts real and simulated sensors of the same motion.

  python -m data_prep.transfer_gap --pretrained=WORKDIR --utd_mhad_dir=../shared/data/utd_mhad \
      [--out=gap.json]

Pretraining sees simulated IMU; evaluation sees real sensors. UTD-MHAD has both for every
trial: its real wrist or thigh sensor, and the same location simulated from its Kinect
skeleton (as `convert_utd_mhad` does for the other locations). Each trial is one 5 s window
(centred, padded at rest, as the downstream evaluation windows it), embedded by the pretrained
IMU tower in both versions. Per sensor location (right_wrist: actions 1-21, right_thigh: 22-27):

  pair_cosine / other_cosine   mean cosine of a trial's real and simulated embeddings, and
                               of real and simulated embeddings of different trials
  real_to_sim_r1               how often the nearest simulated embedding of a real one is
                               its own trial's (chance 1 / trials)
  linear F1 real->real, sim->real   macro F1 on the test subjects (2, 4, 6, 8) of a logistic
                               regression on training-subject (1, 3, 5) embeddings of real
                               or of simulated windows: what is lost when the labelled
                               data are simulated and the test data real

A tower that closes the gap has pair_cosine well above other_cosine, r1 far above chance, and
sim->real close to real->real. `aligned` repeats the measures with each real sensor first
turned into the simulator's sensor frame: the one rotation per location (Kabsch, fitted on the
training subjects' samples, acc and gyro together) that best maps real onto simulated
readings. What it recovers is the part of the gap that is the device's axis convention, not
the motion. Written by hand: it joins the UTD-MHAD reader, the simulator
and the pretrained tower, which no library does.
"""

from __future__ import annotations

import json
import logging

from absl import app
from absl import flags
import jax
import numpy as np
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from data_prep import convert_utd_mhad
from mujo_jax import checkpoint
from mujo_jax import console
from mujo_jax import evaluation
from mujo_jax import model as model_lib
from mujo_jax.sim import virtual_imu
from mujo_jax.sources import utd_mhad

WINDOW = 250   # 5 s at 50 Hz, the downstream window
TRAIN_SUBJECTS, TEST_SUBJECTS = (1, 3, 5), (2, 4, 6, 8)


def real_and_simulated(trial) -> tuple[np.ndarray, np.ndarray]:
  """One trial -> (real [250, 6], simulated at the real location [250, 6]), SI units."""
  real = utd_mhad.load_inertial(trial)
  positions = convert_utd_mhad.aligned_positions(trial, real, utd_mhad.load_skeleton(trial))
  positions, real, _ = convert_utd_mhad.pad_at_rest(positions, real, WINDOW,
                                                    utd_mhad.INERTIAL_HZ)
  sim = virtual_imu.simulate_imu(positions, fps=utd_mhad.INERTIAL_HZ,
                                 skeleton=convert_utd_mhad.SKELETON,
                                 locations=[trial.sensor_location],
                                 rate_hz=utd_mhad.INERTIAL_HZ,
                                 smoothing_s=convert_utd_mhad.SMOOTHING_S)[0]
  return real.astype(np.float32), sim.astype(np.float32)


def fit_rotation(real: np.ndarray, sim: np.ndarray) -> np.ndarray:
  """[N, T, 6] pairs -> the rotation R [3, 3] minimising |R acc_real - acc_sim|^2 +
  |R gyr_real - gyr_sim|^2 over all samples (Kabsch; acc and gyro standardised alike)."""
  a = np.concatenate([real[..., :3].reshape(-1, 3) / 9.81, real[..., 3:].reshape(-1, 3)])
  b = np.concatenate([sim[..., :3].reshape(-1, 3) / 9.81, sim[..., 3:].reshape(-1, 3)])
  u, _, vt = np.linalg.svd(b.T @ a)
  d = np.sign(np.linalg.det(u @ vt))
  return u @ np.diag([1.0, 1.0, d]) @ vt


def rotate(x: np.ndarray, r: np.ndarray) -> np.ndarray:
  return np.concatenate([x[..., :3] @ r.T, x[..., 3:] @ r.T], axis=-1).astype(x.dtype)


def linear_f1(x_train, y_train, x_test, y_test) -> float:
  clf = linear_model.LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train)
  return float(sk_metrics.f1_score(y_test, clf.predict(x_test), labels=np.unique(y_test),
                                   average="macro", zero_division=0))


def measure(pretrained: str, utd_mhad_dir: str, batch: int = 128, log=logging.info) -> dict:
  config, params, step = checkpoint.load_pretrained(pretrained)
  model = model_lib.MuJo(config.model)
  embed = jax.jit(lambda x: model.apply({"params": params}, {"imu": x},
                                        modalities=("imu",))["imu"])
  trials = utd_mhad.list_trials(utd_mhad_dir, [])
  pairs = [real_and_simulated(t) for t in trials]
  log("simulated %d trials", len(trials))

  def embed_all(x):
    out = []
    for i in range(0, len(x), batch):
      chunk = x[i:i + batch]
      out.append(np.asarray(embed(evaluation.pad_batch(chunk, batch)))[:len(chunk)])
    return np.concatenate(out)

  real_x = np.stack([p[0] for p in pairs])
  sim_x = np.stack([p[1] for p in pairs])
  label = np.array([t.action - 1 for t in trials])
  subject = np.array([t.subject for t in trials])
  location = np.array([t.sensor_location for t in trials])
  aligned_x = real_x.copy()
  rotations = {}
  for loc in sorted(set(location)):
    fit = (location == loc) & np.isin(subject, TRAIN_SUBJECTS)
    rotations[loc] = fit_rotation(real_x[fit], sim_x[fit])
    aligned_x[location == loc] = rotate(real_x[location == loc], rotations[loc])
  sim = embed_all(sim_x)
  result = {"pretrained": f"{pretrained} (step {step})", "locations": {}, "aligned": {}}
  for key, real in (("locations", embed_all(real_x)), ("aligned", embed_all(aligned_x))):
    for loc in sorted(set(location)):
      result[key][loc] = _gap(real[location == loc], sim[location == loc],
                              subject[location == loc], label[location == loc])
      if key == "aligned":
        angle = np.degrees(np.arccos(np.clip((np.trace(rotations[loc]) - 1) / 2, -1, 1)))
        result[key][loc]["rotation_deg"] = round(float(angle), 1)
      log("%s %s: %s", key, loc, result[key][loc])
  return result


def _gap(r, s, subject, y) -> dict:
  """The measures of the module docstring for one location's real / simulated embeddings."""
  cos = r @ s.T
  n = len(r)
  train = np.isin(subject, TRAIN_SUBJECTS)
  test = np.isin(subject, TEST_SUBJECTS)
  return {
      "trials": int(n),
      "pair_cosine": round(float(np.diag(cos).mean()), 4),
      "other_cosine": round(float((cos.sum() - np.trace(cos)) / (n * n - n)), 4),
      "real_to_sim_r1": round(float((cos.argmax(axis=1) == np.arange(n)).mean()), 4),
      "chance_r1": round(1 / n, 4),
      "linear_f1_real_to_real": round(linear_f1(r[train], y[train], r[test], y[test]), 4),
      "linear_f1_sim_to_real": round(linear_f1(s[train], y[train], r[test], y[test]), 4),
      "linear_f1_sim_to_sim": round(linear_f1(s[train], y[train], s[test], y[test]), 4),
  }


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("pretrained", None, "Pretraining workdir.", required=True)
  flags.DEFINE_string("utd_mhad_dir", "../shared/data/utd_mhad", "UTD-MHAD root.")
  flags.DEFINE_string("out", None, "Write the result as JSON here.")


def main(argv):
  del argv
  console.setup()
  result = measure(FLAGS.pretrained, FLAGS.utd_mhad_dir, log=lambda fmt, *a: print(fmt % a))
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
