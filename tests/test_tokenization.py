"""Tokenizers: exact ids, special tokens, padding, case, strict checking, save/load and AutoTokenizer round trips."""
import json
import pickle
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dnallm_nb.dna import InvalidSequenceError
from dnallm_nb.tokenization import CaduceusTokenizer, PlantTokenizer
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()


@pytest.fixture(scope="module")
def caduceus():
    return CaduceusTokenizer()


@pytest.fixture(scope="module")
def plant():
    return PlantTokenizer()


def ids(tokenizer, text, **kwargs):
    return tokenizer(text, **kwargs)["input_ids"]


def test_caduceus_vocabulary_is_the_released_one(caduceus):
    expected = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N"]
    assert caduceus.get_vocab() == {tok: i for i, tok in enumerate(expected)}
    assert (caduceus.cls_token_id, caduceus.sep_token_id, caduceus.bos_token_id, caduceus.mask_token_id,
            caduceus.pad_token_id, caduceus.unk_token_id) == (0, 1, 2, 3, 4, 6)


def test_caduceus_ids_sep_and_case(caduceus):
    assert ids(caduceus, "GATTACA") == [9, 7, 10, 10, 7, 8, 7, 1]
    assert ids(caduceus, "gattaca") == ids(caduceus, "GATTACA")
    assert ids(caduceus, "ACGTN", add_special_tokens=False) == [7, 8, 9, 10, 11]
    assert ids(caduceus, "AC", text_pair="GT") == [7, 8, 1, 9, 10, 1]
    assert caduceus.encode("acgt") == [7, 8, 9, 10, 1]
    assert caduceus.tokenize("acgn") == ["A", "C", "G", "N"]
    assert len(ids(caduceus, "ACGT" * 32768)) == 131073  # a full 131k window + [SEP]


def test_caduceus_left_padding_with_attention_mask(caduceus):
    batch = caduceus(["ACG", "ACGTA"], padding=True, return_tensors="pt")
    assert list(batch) == ["input_ids", "attention_mask"]
    assert batch["input_ids"].tolist() == [[4, 4, 7, 8, 9, 1], [7, 8, 9, 10, 7, 1]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("cls", [CaduceusTokenizer, PlantTokenizer])
def test_right_padding_per_call_per_tokenizer_and_after_reload(tmp_path, cls):
    right = cls(padding_side="right")
    batch = right(["AC", "ACGT"], padding=True)
    pad = right.pad_token_id
    n = len(right("AC")["input_ids"])  # 2 bases, + [SEP] for Caduceus
    width = len(right("ACGT")["input_ids"])
    assert batch["attention_mask"][0] == [1] * n + [0] * (width - n)
    assert batch["input_ids"][0][n:] == [pad] * (width - n)
    assert cls()(["AC", "ACGT"], padding=True, padding_side="right") == batch
    right.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "right"


def test_unknown_characters_map_to_unk_when_not_strict():
    lenient = CaduceusTokenizer(strict=False)
    assert ids(lenient, "AXU ", add_special_tokens=False) == [7, 6, 6, 6]
    assert ids(lenient, "") == [1]
    lenient_plant = PlantTokenizer(strict=False)
    assert ids(lenient_plant, "AxN") == [3, 2, 2]


def test_masks_written_in_text(caduceus, plant):
    assert ids(caduceus, "AC[MASK]t") == [7, 8, 3, 10, 1]
    assert ids(plant, "AC[MASK]t") == [3, 4, 1, 6]


def test_plant_ids_case_and_no_special_tokens(plant):
    assert plant.get_vocab() == {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "a": 3, "c": 4, "g": 5, "t": 6}
    assert ids(plant, "ACGT") == [3, 4, 5, 6] == ids(plant, "acgt") == ids(plant, "AcGt")
    assert ids(plant, "ACGN") == [3, 4, 5, 2]
    window = "ACGT" * 128
    assert len(ids(plant, window)) == 512 and ids(plant, window)[255] == 6
    assert ids(plant, ["AC", "ACGT"], padding=True) == [[0, 0, 3, 4], [3, 4, 5, 6]]
    assert plant.decode([3, 4, 5, 6]) == "acgt"


@pytest.mark.parametrize("bad, message", [("ACGU", "'U'"), ("", "empty"), ("ACGT\n", "first at position 4"), ("MKV", "'KMV'")])
def test_strict_rejects_non_dna(caduceus, plant, bad, message):
    for tokenizer in (caduceus, plant):
        with pytest.raises(InvalidSequenceError, match=message):
            tokenizer(bad)
    with pytest.raises(InvalidSequenceError, match=message):
        caduceus.encode(bad)


def test_strict_error_names_the_batch_item_and_position(caduceus):
    with pytest.raises(InvalidSequenceError, match=r"#2 of the batch.*position 3"):
        caduceus(["ACGT", "AAAA", "ACGRT"])
    with pytest.raises(InvalidSequenceError, match="#1 of the batch.*empty"):
        caduceus(["ACGT", ""])
    with pytest.raises(TypeError, match="str"):
        caduceus([b"ACGT"])


def test_complement_maps_match_the_golden_configs(caduceus, plant):
    for folder, tokenizer in [("caduceus-ph-tiny", caduceus), ("plantcaduceus-tiny", plant)]:
        config = json.loads((GOLDEN / folder / "config.json").read_text())
        golden_map = [config["complement_map"][str(i)] for i in range(len(config["complement_map"]))]
        assert tokenizer.complement_map == golden_map[: len(tokenizer)]
    assert caduceus.complement_map[7:11] == [10, 9, 8, 7]
    assert plant.complement_map == [0, 1, 2, 6, 5, 4, 3]


@pytest.mark.parametrize("cls", [CaduceusTokenizer, PlantTokenizer])
def test_save_load_round_trip(tmp_path, cls):
    original = cls(model_max_length=1024, strict=False)
    original.save_pretrained(tmp_path)
    batch = ["ACGTN", "gattaca", "AxG", "ac[MASK]g"]
    for reloaded in (cls.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(reloaded) is cls
        assert (reloaded.strict, reloaded.model_max_length, reloaded.padding_side) == (False, 1024, "left")
        assert ids(reloaded, batch, padding=True) == ids(original, batch, padding=True)
        assert reloaded.complement_map == original.complement_map


def test_pickle_round_trip_for_dataloader_workers(caduceus):
    copy = pickle.loads(pickle.dumps(caduceus))
    assert ids(copy, "ACGT") == ids(caduceus, "ACGT") and copy.strict


def test_released_tokenizer_config_loads_without_remote_code():
    config = json.loads((GOLDEN / "caduceus-ph-tiny" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "CaduceusTokenizer" and "auto_map" in config
    for folder in ("caduceus-ph-tiny", "caduceus-ps-tiny"):
        tokenizer = CaduceusTokenizer.from_pretrained(GOLDEN / folder)
        assert ids(tokenizer, "ACGTN") == [7, 8, 9, 10, 11, 1]
        assert tokenizer.model_max_length == 131072 and tokenizer.padding_side == "left" and tokenizer.strict


def test_auto_tokenizer_reads_released_caduceus_checkpoints_without_remote_code():
    import dnallm_nb.modeling  # noqa: F401  registers model_type "caduceus" with AutoConfig

    for folder in ("caduceus-ph-tiny", "caduceus-ps-tiny"):
        tokenizer = AutoTokenizer.from_pretrained(GOLDEN / folder, trust_remote_code=False)
        assert type(tokenizer) is CaduceusTokenizer
        assert ids(tokenizer, "acgtn") == [7, 8, 9, 10, 11, 1]
