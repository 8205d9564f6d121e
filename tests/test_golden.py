"""The native models reproduce the upstream reference outputs stored with the golden checkpoints (max |Δ| ≤ 1e-4).

Each golden folder is laid out like a released checkpoint (config.json with the upstream auto_map, weights with or
without the tied copies). Every model is loaded both through our classes and through the transformers Auto classes.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM

from dnallm_nb.modeling import CaduceusForMaskedLM, CaduceusModel
from dnallm_nb.rc import reverse_complement_ids
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
FAMILIES = ["caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"]
TAGS = ["short", "long"]
LOADERS = {"class": (CaduceusForMaskedLM, CaduceusModel), "auto": (AutoModelForMaskedLM, AutoModel)}
TOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    "Golden tensors and the outputs of the models loaded every way, for one golden folder."
    folder = GOLDEN / request.param
    golden = load_file(folder / "golden.safetensors")
    outputs = {}
    with torch.no_grad():
        for loader, (mlm_cls, base_cls) in LOADERS.items():
            mlm, base = mlm_cls.from_pretrained(folder).eval(), base_cls.from_pretrained(folder).eval()
            assert isinstance(mlm, CaduceusForMaskedLM) and isinstance(base, CaduceusModel)
            for tag in TAGS:
                ids = golden[f"{tag}.input_ids"]
                outputs[loader, tag] = {"mlm": mlm(ids, output_hidden_states=True),
                                        "base": base(ids, output_hidden_states=True)}
                if loader == "class" and mlm.config.rcps:
                    rc_ids = reverse_complement_ids(ids, torch.tensor(mlm.config.complement_ids))
                    outputs[loader, tag]["rc_logits"] = mlm(rc_ids).logits
    return request.param, golden, outputs


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("tag", TAGS)
def test_mlm_logits(family, tag, loader):
    _, golden, outputs = family
    assert max_diff(outputs[loader, tag]["mlm"].logits, golden[f"{tag}.logits"]) <= TOL


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("tag", TAGS)
def test_last_hidden_state(family, tag, loader):
    _, golden, outputs = family
    assert max_diff(outputs[loader, tag]["base"].last_hidden_state, golden[f"{tag}.last_hidden_state"]) <= TOL


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("tag", TAGS)
def test_every_hidden_state(family, tag, loader):
    _, golden, outputs = family
    expected = golden[f"{tag}.hidden_states"]  # (n_layer + 1, B, L, d or 2d)
    for model in ("mlm", "base"):
        hidden = outputs[loader, tag][model].hidden_states
        assert len(hidden) == expected.shape[0]
        for i, (got, want) in enumerate(zip(hidden, expected)):
            assert max_diff(got, want) <= TOL, f"{model} hidden_states[{i}]"


@pytest.mark.parametrize("tag", TAGS)
def test_rc_logits(family, tag):
    name, golden, outputs = family
    if f"{tag}.rc_logits" not in golden:
        pytest.skip(f"{name} is not an RCPS model")
    assert max_diff(outputs["class", tag]["rc_logits"], golden[f"{tag}.rc_logits"]) <= TOL


def test_golden_folders_present():
    "The suite must not pass vacuously: all four golden folders exist with both inputs."
    for name in FAMILIES:
        golden = load_file(GOLDEN / name / "golden.safetensors")
        assert {f"{t}.{k}" for t in TAGS for k in ("input_ids", "logits", "last_hidden_state", "hidden_states")} <= set(golden)
