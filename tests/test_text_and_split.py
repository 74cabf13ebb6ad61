import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA
from data_prep import fimad_split
from data_prep import text

OFFICIAL_SPLIT = os.path.join(SHARED_DATA, "fimad", "train_val_split.json")


@pytest.mark.skipif(not os.path.exists(OFFICIAL_SPLIT),
                    reason="../shared/data/fimad (FiMAD's official split) is not beside the checkout")
def test_reads_official_fimad_split():
  clip_split = fimad_split.load_split(OFFICIAL_SPLIT)
  counts = {s: sum(v == s for v in clip_split.values()) for s in ("train", "val")}
  assert counts == {"train": 8227, "val": 1584}
  videos = {}
  for clip, split in clip_split.items():
    videos.setdefault(clip.split("___")[0], set()).add(split)
  assert all(len(s) == 1 for s in videos.values())  # no video straddles splits


def test_split_round_trip_and_errors(tmp_path):
  path = tmp_path / "split.json"
  fimad_split.write_split(str(path), {"b___1": "val", "a___0": "train", "a___1": "train"})
  assert json.loads(path.read_text()) == {"train": ["a___0", "a___1"], "val": ["b___1"]}
  assert fimad_split.load_split(str(path)) == {"a___0": "train", "a___1": "train", "b___1": "val"}
  path.write_text(json.dumps({"train": ["x___0"], "val": ["x___0"]}))
  with pytest.raises(ValueError, match=r"split\.json: clip 'x___0' is in both 'train' and 'val'"):
    fimad_split.load_split(str(path))
  path.write_text(json.dumps({"train": "x___0"}))
  with pytest.raises(ValueError, match="split 'train' must be a list"):
    fimad_split.load_split(str(path))
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    fimad_split.load_split(str(path))


def test_tokenizer_is_minilm_wordpiece():
  tokenizer = text.load_tokenizer()
  assert tokenizer.vocab_size == 30522 and tokenizer.pad_token_id == 0
  ids, lengths = text.tokenize(tokenizer, ["Squats", "a " * 100], max_len=16)
  assert ids.dtype == np.int32 and ids.shape == (2, 16)
  # bert-base-uncased WordPiece: [CLS]=101, "squat"=26783, "##s"=2015, [SEP]=102.
  np.testing.assert_array_equal(ids[0, :4], [101, 26783, 2015, 102])
  assert lengths.tolist() == [4, 16] and ids[0, 4:].sum() == 0
  assert ids[1, 15] == 102  # truncation keeps [SEP]


def test_every_exercise_has_several_descriptions():
  from mujo_jax.sim import motion
  assert set(text.DESCRIPTIONS) == set(motion.EXERCISES)
  assert all(len(set(d)) >= 3 for d in text.DESCRIPTIONS.values())


def test_converters_refuse_a_text_that_text_len_would_cut():
  tokenizer = text.load_tokenizer()
  text.check_lengths(tokenizer, ["squats", "a person walks"], 6)  # 4 and 5 ids: fit
  with pytest.raises(ValueError, match="'a person walks briskly' is 7 token ids, more than "
                                       "text_len 6"):
    text.check_lengths(tokenizer, ["squats", "a person walks briskly"], 6)


def test_mix_config_reads_label_free_utd_and_freezes_the_pretrained_text_tower():
  from configs import pretrain
  config = pretrain.get_config("mix=mocap+utd")
  assert config.data.mixture == (("data/mocap32", 1.0, ("imu", "pose", "text")),
                                 ("data/utd_mhad_h36m", 1.0, ("imu", "pose")))
  assert config.data.dir == "data/mocap32" and config.data.train_split == "train"
  assert config.data.imu_locations == "right_wrist,right_thigh"
  assert config.model.towers.text.architecture == "minilm"
  assert tuple(config.model.frozen_towers) == ("text",)
  with pytest.raises(ValueError, match=r"unknown sources \['kit'\]"):
    pretrain.get_config("mix=mocap+kit")
  # Text from movement captions: UTD-MHAD's training subjects then bring text too.
  config = pretrain.get_config("mix=mocap-motion+demo+utd-motion")
  assert [m for _, _, m in config.data.mixture] == [("imu", "pose", "text")] * 3
  assert config.data.dir == "data/mocap32_motion"
