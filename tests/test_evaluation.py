"""Validation metrics on the mesh: recall vs the host reference, same-caption recall, zero-shot."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import pretrain
from mujo_jax import contrastive
from mujo_jax import evaluation
from mujo_jax import input_pipeline
from mujo_jax import model as model_lib
from mujo_jax import records
from mujo_jax import tokenizer as tokenizer_lib
from mujo_jax import train
from mujo_jax.modalities import MODALITIES
from mujo_jax.modalities import MODEL_INPUTS

KS = (1, 5)


def make_mesh(data, fsdp):
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


def shard(x, mesh, axes):
  return jax.device_put(np.asarray(x), NamedSharding(mesh, P(axes)))


def embeddings_case(kind, rng, n, d=6):
  """(za, zb, valid): random; integer-valued with many exact ties; or with invalid rows."""
  if kind == "ties":
    # Small integers: every dot product is exact, so equal scores are truly equal.
    za = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    zb = za.copy()
    zb[rng.random(n) < 0.5] = za[0]  # many candidates identical to one another
  else:
    za = rng.normal(size=(n, d)).astype(np.float32)
    zb = (za + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
  valid = rng.random(n) < 0.6 if kind == "invalid" else np.ones(n, bool)
  return za, zb, valid


@pytest.mark.parametrize("kind", ["random", "ties", "invalid"])
@pytest.mark.parametrize("mesh_shape,axes,chunk_rows", [
    ((8, 1), "data", 4),            # n_local = 6: not a multiple of the chunk
    ((4, 2), "data", 512),          # fsdp devices hold replicas
    ((4, 2), ("data", "fsdp"), 5),  # batch sharded over both axes
])
def test_mesh_recall_equals_the_host_reference(kind, mesh_shape, axes, chunk_rows):
  rng = np.random.default_rng(["random", "ties", "invalid"].index(kind))
  n = 48
  za, zb, valid = embeddings_case(kind, rng, n)
  mesh = make_mesh(*mesh_shape)
  got = evaluation.retrieval_metrics(
      {"imu": shard(za, mesh, axes), "pose": shard(zb, mesh, axes)},
      {"imu": shard(valid, mesh, axes), "pose": shard(np.ones(n, bool), mesh, axes)},
      [("imu", "pose")], mesh, ks=KS, batch_axes=axes, chunk_rows=chunk_rows)
  want = contrastive.retrieval_recall(za, zb, ks=KS, valid=valid)
  for k in KS:
    assert got[f"r{k}/imu_to_pose"] == pytest.approx(want[f"recall@{k}_a_to_b"], abs=1e-12)
    assert got[f"r{k}/pose_to_imu"] == pytest.approx(want[f"recall@{k}_b_to_a"], abs=1e-12)
    assert got[f"r{k}/imu_pose"] == pytest.approx(
        (want[f"recall@{k}_a_to_b"] + want[f"recall@{k}_b_to_a"]) / 2, abs=1e-12)
  assert not any("caption" in key for key in got)  # no text in the pair


def test_ties_count_against_the_query():
  mesh = make_mesh(8, 1)
  z = shard(np.ones((16, 4), np.float32), mesh, "data")  # collapsed: all scores tie
  ones = shard(np.ones(16, bool), mesh, "data")
  got = evaluation.retrieval_metrics({"imu": z, "pose": z}, {"imu": ones, "pose": ones},
                                     [("imu", "pose")], mesh, ks=(1, 15, 16))
  assert [got[f"r{k}/imu_to_pose"] for k in (1, 15, 16)] == [0.0, 0.0, 1.0]


def test_pairs_without_a_valid_example_are_left_out_and_uneven_rows_are_an_error():
  mesh = make_mesh(8, 1)
  z = shard(np.eye(16, 4, dtype=np.float32), mesh, "data")
  ones, zeros = shard(np.ones(16, bool), mesh, "data"), shard(np.zeros(16, bool), mesh, "data")
  masks = {"imu": ones, "pose": zeros, "video": ones}
  got = evaluation.retrieval_metrics({"imu": z, "pose": z, "video": z}, masks,
                                     [("imu", "pose"), ("imu", "video")], mesh)
  assert sorted(got) == sorted(f"r{k}/{name}" for k in KS
                               for name in ("imu_video", "imu_to_video", "video_to_imu"))
  with pytest.raises(ValueError, match="not divisible by the 8 shards"):
    evaluation.retrieval_metrics({"imu": np.zeros((12, 4)), "pose": np.zeros((12, 4))},
                                 {"imu": np.ones(12), "pose": np.ones(12)}, [("imu", "pose")], mesh)


def test_caption_ids_are_equal_exactly_for_equal_token_rows():
  text_ids = np.array([[5, 6, 0], [7, 0, 0], [5, 6, 0], [5, 6, 1], [7, 0, 0], [0, 0, 0]], np.int32)
  has_text = np.array([1, 1, 1, 1, 1, 0], bool)
  ids = np.asarray(jax.jit(evaluation.caption_ids)(text_ids, has_text))
  assert ids[5] == -1
  same = text_ids[:5, None, :] == text_ids[None, :5, :]
  np.testing.assert_array_equal(ids[:5, None] == ids[None, :5], same.all(-1))


def caption_recall_reference(queries, candidates, captions, k):
  """Loop: sort candidates by score, ties with wrong captions first; hit if a top-k one is right."""
  hits = []
  for i, q in enumerate(queries):
    scores = candidates @ q
    right = captions == captions[i]
    order = np.lexsort((right, -scores))  # by score, descending; then wrong before right
    hits.append(right[order[:k]].any())
  return float(np.mean(hits))


@pytest.mark.parametrize("integer_valued", [False, True])
def test_same_caption_recall_equals_a_numpy_reference_with_repeated_captions(integer_valued):
  rng = np.random.default_rng(int(integer_valued))
  n, d, num_captions = 64, 4, 6
  phrasings = rng.integers(1, 100, size=(num_captions, 5)).astype(np.int32)
  phrasings[:, -1] = 0  # padding, as stored
  caption = rng.integers(0, num_captions, n)
  prototypes = rng.normal(size=(num_captions, d))
  if integer_valued:  # exact ties: same text, same embedding; imu near it
    text = np.round(2 * prototypes[caption]).astype(np.float32)
    imu = text + rng.integers(-1, 2, size=(n, d)).astype(np.float32)
  else:
    text = prototypes[caption].astype(np.float32)
    imu = (text + 0.7 * rng.normal(size=(n, d))).astype(np.float32)
  has_text = rng.random(n) < 0.8
  text_ids = np.where(has_text[:, None], phrasings[caption], 0)
  mesh = make_mesh(8, 1)
  got = evaluation.retrieval_metrics(
      {"imu": shard(imu, mesh, "data"), "text": shard(text, mesh, "data")},
      {"imu": shard(np.ones(n, bool), mesh, "data"), "text": shard(has_text, mesh, "data")},
      [("imu", "text")], mesh, text_ids=shard(text_ids, mesh, "data"), ks=KS, chunk_rows=3)
  keep = has_text
  for k in KS:
    assert got[f"r{k}_caption/imu_to_text"] == pytest.approx(
        caption_recall_reference(imu[keep], text[keep], caption[keep], k), abs=1e-12)
    assert got[f"r{k}_caption/text_to_imu"] == pytest.approx(
        caption_recall_reference(text[keep], imu[keep], caption[keep], k), abs=1e-12)
  if integer_valued:  # exact scores: the tie rule decides, the same on both sides
    exact = contrastive.retrieval_recall(imu, text, ks=KS, valid=has_text)
    assert got["r1/imu_to_text"] == pytest.approx(exact["recall@1_a_to_b"], abs=1e-12)
  # Identical texts embed identically: exact-index retrieval cannot tell them apart.
  assert got["r1_caption/imu_to_text"] > got["r1/imu_to_text"] + 0.3


def planted_zero_shot(rng, n, num_classes, shuffled):
  """imu embeddings near their class's text embedding (or labels shuffled against them)."""
  labels = rng.integers(0, num_classes - 1, n)  # the last class never occurs
  labels[rng.random(n) < 0.1] = -1
  classes = np.eye(num_classes, 8, dtype=np.float32)
  imu = classes[labels] + 0.1 * rng.normal(size=(n, 8)).astype(np.float32)
  if shuffled:
    labels = rng.permutation(labels)
  has_imu = rng.random(n) < 0.9
  return labels, classes, imu, has_imu


@pytest.mark.parametrize("shuffled", [False, True])
def test_zero_shot_accuracy_of_planted_and_shuffled_class_texts(shuffled):
  rng = np.random.default_rng(0)
  n, names = 2048, ("a", "b", "c", "d", "e")
  labels, classes, imu, has_imu = planted_zero_shot(rng, n, len(names), shuffled)
  mesh = make_mesh(4, 2)
  metrics, absent = evaluation.zero_shot_metrics(
      {"imu": shard(imu, mesh, "data")}, {"imu": shard(has_imu, mesh, "data")},
      shard(labels, mesh, "data"), classes, names, mesh)
  scored = has_imu & (labels >= 0)
  pred = (imu @ classes.T).argmax(1)
  assert metrics["zero_shot/imu_count"] == scored.sum()
  assert metrics["zero_shot/imu_acc"] == pytest.approx(np.mean(pred[scored] == labels[scored]))
  assert absent == {"imu": ["e"]}
  per_class = [np.mean(pred[scored & (labels == c)] == c) for c in range(4)]
  assert metrics["zero_shot/imu_macro_acc"] == pytest.approx(np.mean(per_class))
  if shuffled:  # chance among the 4 classes that occur (std ~0.01 at this n)
    assert abs(metrics["zero_shot/imu_acc"] - 0.25) < 0.05
  else:
    assert metrics["zero_shot/imu_acc"] == metrics["zero_shot/imu_macro_acc"] == 1.0


def test_zero_shot_is_skipped_with_a_reason_for_other_tokenizers():
  modalities = ("imu", "pose", "video", "text")
  assert evaluation.zero_shot_skip_reason(tokenizer_lib.TOKENIZER_NAME, ("a",), modalities) is None
  assert "'test'" in evaluation.zero_shot_skip_reason("test", ("a",), modalities)
  assert "no text tower" in evaluation.zero_shot_skip_reason(
      tokenizer_lib.TOKENIZER_NAME, ("a",), ("imu", "pose"))
  assert "no class names" in evaluation.zero_shot_skip_reason(
      tokenizer_lib.TOKENIZER_NAME, (), modalities)


def test_class_prompts_read_like_the_demo_captions():
  assert evaluation.class_prompts(["dumbbell_biceps_curls", "squats"]) == [
      "dumbbell biceps curls", "squats"]


def test_prompt_batches_place_prompt_c_at_global_row_c():
  ids = np.arange(5)[:, None] * np.ones((1, 3), np.int32) + 1
  lengths = np.arange(5, dtype=np.int32) + 2
  template = {"text_ids": np.zeros((2, 3), np.int32), "text_len": np.full(2, 9, np.int32)}
  parts = [evaluation.prompt_batches(ids, lengths, template, p, 2) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == 2  # global batch 4 -> 2 batches
  rows = np.concatenate([parts[p][b]["text_ids"] for b in range(2) for p in range(2)])
  lens = np.concatenate([parts[p][b]["text_len"] for b in range(2) for p in range(2)])
  np.testing.assert_array_equal(rows[:5], ids)
  np.testing.assert_array_equal(lens, [2, 3, 4, 5, 6, 9, 9, 9])
  assert not rows[5:].any()


def host_val_split(trainer, state):
  """The val split embedded batch by batch and fetched to the host (the former way)."""
  c = trainer.config
  ds = input_pipeline.make_dataset(c.data.dir, c.data.val_split, batch_size=c.eval_batch_size,
                                   seed=c.seed, shuffle=False, num_epochs=1, drop_remainder=False)
  rows = []
  for local in ds:
    n = len(local["label"])
    # pylint: disable-next=protected-access
    padded = trainer._val_batch(local, c.eval_batch_size)
    # pylint: disable-next=protected-access
    emb = trainer._embed(state.params, {k: padded[k] for k in MODEL_INPUTS})
    rows.append({**{m: np.asarray(v)[:n] for m, v in emb.items()},
                 **{k: local[k] for k in ("modality_mask", "text_ids", "label")}})
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.slow  # builds a small demo dataset and compiles the model (~30-80 s on 2 cores)
def test_trainer_evaluate_matches_host_references_on_demo_data(demo_dir):
  config = pretrain.get_config("demo")
  config.data.dir = demo_dir
  config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, embed_dim=32)
  config.batch_size = config.eval_batch_size = 16
  trainer = train.Trainer(config, None)
  state = trainer.init_state()
  metrics = trainer.evaluate(state)
  host = host_val_split(trainer, state)
  assert len(host["label"]) % 16  # the last batch is padded
  present = host["modality_mask"].astype(bool)
  captions = np.unique(host["text_ids"], axis=0, return_inverse=True)[1].ravel()
  for a, b in contrastive.all_pairs(trainer.modalities):
    valid = present[:, MODALITIES.index(a)] & present[:, MODALITIES.index(b)]
    want = contrastive.retrieval_recall(host[a], host[b], ks=KS, valid=valid)
    for k in KS:
      assert metrics[f"val/r{k}/{a}_to_{b}"] == pytest.approx(want[f"recall@{k}_a_to_b"])
      assert metrics[f"val/r{k}/{b}_to_{a}"] == pytest.approx(want[f"recall@{k}_b_to_a"])
      if b == "text":
        assert metrics[f"val/r{k}_caption/{a}_to_text"] == pytest.approx(caption_recall_reference(
            host[a][valid], host["text"][valid], captions[valid], k))
  info = records.DatasetInfo.load(demo_dir)
  ids, lengths = tokenizer_lib.tokenize(tokenizer_lib.load_tokenizer(),
                                        [n.replace("_", " ") for n in info.class_names], 64)
  classes = model_lib.MuJo(trainer.model_config).apply(
      {"params": state.params}, {"text_ids": ids, "text_len": lengths},
      modalities=("text",))["text"]
  for m in ("imu", "pose", "video"):
    scored = present[:, MODALITIES.index(m)] & (host["label"] >= 0)
    pred = (host[m] @ np.asarray(classes).T).argmax(1)
    assert metrics[f"val/zero_shot/{m}_count"] == scored.sum() > 0
    assert metrics[f"val/zero_shot/{m}_acc"] == pytest.approx(
        np.mean(pred[scored] == host["label"][scored]))
