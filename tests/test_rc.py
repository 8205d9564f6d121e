"""RC-equivariance checks on the golden checkpoints: exact for PS, approximate for Ph, broken models caught."""
from functools import cache

import matplotlib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dnallm_nb.testing import golden_path
from dnallm_nb.dna import InvalidSequenceError
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.rc import (RCReport, align_rc_logits, break_rc_sharing, check_rc_equivariance, model_complement_map,
                          reverse_complement)

matplotlib.use("Agg")
GOLDEN = golden_path()
PS_FOLDERS = ["caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"]
ATOL = 1e-5
# odd lengths, length 1, unequal lengths (two share one), lower case, N
SEQUENCES = {"odd": "ACGTTGCAAGC", "one": "G", "lower+N": "acgtNNacgtA", "even": "TTTACGGACTAG", "longer": "GATTACA" * 9}


@cache
def load(folder: str, task: str = "mask"):
    model, tokenizer = load_model_and_tokenizer(GOLDEN / folder, task=task)
    return model, tokenizer


@cache
def report_for(folder: str) -> RCReport:
    return check_rc_equivariance(*load(folder), SEQUENCES)


def max_abs(report: RCReport) -> dict[tuple[str, str], float]:
    return report.summary().set_index(["view", "layer"]).max_abs.to_dict()


@pytest.mark.parametrize("folder", PS_FOLDERS)
def test_ps_golden_is_exactly_equivariant_at_every_layer_and_on_logits(folder):
    report = report_for(folder)
    model, _ = load(folder)
    n_states = model.config.n_layer + 1
    errors = max_abs(report)
    assert report.passed and report.layout == "ps"
    assert len(errors) == 2 * n_states + 1  # equivariant + invariant views at every hidden state, plus the logits
    assert ("logits", "lm_head") in errors
    assert max(errors.values()) <= ATOL, errors
    assert np.allclose(report.pooled_cosine["invariant"], 1, atol=1e-6)


@pytest.mark.parametrize("folder", PS_FOLDERS)
def test_alignment_matches_upstream_rc_logits(folder):
    "The oracle's logits for x and for rc(x) agree under align_rc_logits: the alignment itself is right."
    golden = load_file(GOLDEN / folder / "golden.safetensors")
    model, _ = load(folder)
    for tag in ("short", "long"):
        logits, logits_rc = golden[f"{tag}.logits"], golden[f"{tag}.rc_logits"]
        aligned = align_rc_logits(logits_rc, model_complement_map(model, logits.shape[-1]))
        assert (aligned - logits).abs().max() <= 1e-4
        assert (logits_rc.flip(-2) - logits).abs().max() > 1e-2  # reversing positions alone is not the alignment


def test_ph_golden_raw_view_fails_and_conjoined_view_passes():
    report = report_for("caduceus-ph-tiny")
    errors = max_abs(report)
    assert report.layout == "plain" and not report.passed
    assert min(v for (view, _), v in errors.items() if view in ("raw", "logits")) > 1e-2
    assert max(v for (view, _), v in errors.items() if view.startswith("conjoined")) <= ATOL
    assert report.passed_views == {"raw": False, "conjoined": True, "logits": False, "conjoined logits": True}
    assert (report.pooled_cosine["raw"] < 0.99).all() and np.allclose(report.pooled_cosine["conjoined"], 1)


@pytest.mark.parametrize("folder", PS_FOLDERS)
@pytest.mark.parametrize("layer", [0, 1])
def test_one_weight_perturbed_on_the_rc_strand_only_is_caught_at_its_layer(folder, layer):
    model, tokenizer = load(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = check_rc_equivariance(break_rc_sharing(model, layer=layer), tokenizer, SEQUENCES)
    errors = max_abs(report)
    assert not report.passed
    first_broken = ["layer 1", "layer 2 (final norm)"][layer]  # the report names the output of block `layer` "layer {layer + 1}"
    assert errors["equivariant", "embeddings"] <= ATOL
    if layer == 1:
        assert errors["equivariant", "layer 1"] <= ATOL
    assert errors["equivariant", first_broken] > 10 * ATOL and errors["logits", "lm_head"] > 10 * ATOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


def test_break_rc_sharing_rejects_plain_models_and_unknown_weights():
    with pytest.raises(ValueError, match="RCPS"):
        break_rc_sharing(load("caduceus-ph-tiny")[0])
    with pytest.raises(KeyError, match="mamba_fwd.in_proj.weight"):
        break_rc_sharing(load("caduceus-ps-tiny")[0], parameter="nope")
    with pytest.raises(IndexError, match="2 layers"):
        break_rc_sharing(load("caduceus-ps-tiny")[0], layer=2)


def test_edge_case_inputs_are_grouped_by_length_without_padding():
    report = report_for("caduceus-ph-tiny")
    assert report.names == list(SEQUENCES) and report.lengths == [len(s) for s in SEQUENCES.values()]
    assert [len(e) for e in report.position_errors["raw", "layer 2 (final norm)"]] == report.lengths
    model, tokenizer = load("caduceus-ph-tiny")
    for i, (name, seq) in enumerate(SEQUENCES.items()):  # checked alone: same errors, so nothing leaked between rows
        alone = check_rc_equivariance(model, tokenizer, {name: seq}).position_errors["raw", "layer 2 (final norm)"][0]
        np.testing.assert_allclose(alone, report.position_errors["raw", "layer 2 (final norm)"][i], atol=1e-6)


def test_lower_case_gives_the_same_result_as_upper_case():
    model, tokenizer = load("caduceus-ph-tiny")
    lower = check_rc_equivariance(model, tokenizer, ["acgtnnacgta"])
    upper = check_rc_equivariance(model, tokenizer, ["ACGTNNACGTA"])
    np.testing.assert_array_equal(lower.errors.max_abs, upper.errors.max_abs)
    assert upper.errors.set_index("view").loc["raw"].max_abs.min() > 1e-2  # non-trivial numbers were compared


def test_special_tokens_would_break_the_symmetry():
    "Why the check tokenizes without special tokens: x+[SEP] and rc(x)+[SEP] are not reverse complements."
    model, tokenizer = load("caduceus-ps-tiny")
    x = SEQUENCES["even"]
    ids = torch.tensor([tokenizer(s)["input_ids"] for s in (x, reverse_complement(x))])
    assert (ids[:, -1] == tokenizer.sep_token_id).all()
    logits, logits_rc = model(ids).logits
    assert (logits - align_rc_logits(logits_rc, model_complement_map(model, logits.shape[-1]))).abs().max() > 1e-2


def test_base_model_and_classifier_are_checked_too():
    model, tokenizer = load("caduceus-ps-tiny", "embedding")
    report = check_rc_equivariance(model, tokenizer, SEQUENCES, layers=[0, -1])
    assert report.passed and report.layers == ["embeddings", "layer 2 (final norm)"]
    assert set(report.errors.layer) == {"embeddings", "layer 2 (final norm)"}  # no LM head on a base model
    classifier, _ = load_model_and_tokenizer(GOLDEN / "caduceus-ph-tiny", task="classification", num_labels=3)
    errors = max_abs(check_rc_equivariance(classifier, tokenizer, SEQUENCES))
    assert errors["sequence logits", "classifier"] <= ATOL  # the Ph classifier conjoins: invariant predictions
    assert errors["raw", "layer 2 (final norm)"] > 1e-2


def test_bad_inputs_give_clear_errors():
    model, tokenizer = load("caduceus-ps-tiny")
    with pytest.raises(InvalidSequenceError, match="'chr2:7'.*'X'"):
        check_rc_equivariance(model, tokenizer, {"ok": "ACGT", "chr2:7": "ACXGT"})
    with pytest.raises(InvalidSequenceError, match="empty"):
        check_rc_equivariance(model, tokenizer, ["ACGT", ""])
    with pytest.raises(ValueError, match="no sequences"):
        check_rc_equivariance(model, tokenizer, [])
    with pytest.raises(ValueError, match="does not belong to this model"):
        check_rc_equivariance(model, load("plantcaduceus-tiny")[1], ["ACGTTG"])
    with pytest.raises(IndexError, match=r"valid indices -3..2"):
        check_rc_equivariance(model, tokenizer, ["ACGT"], layers=[3])
    with pytest.raises(TypeError, match="config.rcps"):
        check_rc_equivariance(torch.nn.Linear(2, 2), tokenizer, ["ACGT"])


def test_report_summary_repr_and_plot():
    report = report_for("caduceus-ph-tiny")
    summary = report.summary()
    assert list(summary.columns) == ["view", "layer", "max_abs", "mean_abs", "rel_err", "passed"]
    assert (summary.mean_abs <= summary.max_abs).all() and (summary.rel_err >= 0).all()
    assert "FAILED" in repr(report) and "conjoined" in repr(report) and "<table" in report._repr_html_()
    assert "PASSED" in repr(report_for("caduceus-ps-tiny"))
    fig = report.plot()
    by_layer, by_position = fig.axes
    assert [t.get_text() for t in by_layer.get_xticklabels()] == ["embeddings", "layer 1", "layer 2 (final norm)", "lm_head"]
    assert by_position.get_title() == "per position: raw, layer 2 (final norm)"  # default: first view, its worst layer
    assert len(by_position.get_lines()) == 1  # the largest |Δ| over the sequences, not one line per sequence
    per_sequence = report.position_errors["raw", "layer 2 (final norm)"]
    largest = [max(e[i] for e in per_sequence if len(e) > i) for i in range(max(map(len, per_sequence)))]
    np.testing.assert_allclose(by_position.get_lines()[0].get_ydata(), np.clip(largest, 1e-12, None))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["raw: differs", "conjoined: equal", "logits: differs", "conjoined logits: equal"]
    assert fig.get_suptitle() == report.headline and report.plot(sample="ath_tis").get_suptitle() == f"{report.headline}\nath_tis"
    assert report.plot(view="logits").axes[1].get_title() == "per position: logits, lm_head"
    with pytest.raises(ValueError, match="choose one of"):
        report.plot(view="equivariant")
