"""Fine-tuning (dnallm_nb.finetune): every bad input named with its fix, the regressor, save/load round trips, sklearn."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from dnallm_nb.dna import InvalidSequenceError
from dnallm_nb.finetune import (
    FinetuneClassifier, FinetuneRegressor, compare_with_controls, cross_validate_finetune, load_finetuned, predict_logits,
    sequence_classifier, train_classifier, trainable_model)
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.modeling import CaduceusForMaskedLM
from dnallm_nb.probing import gc_content, make_dna_task, probe_layers
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
PS, PH, PLANTCAD2 = GOLDEN / "caduceus-ps-tiny", GOLDEN / "caduceus-ph-tiny", GOLDEN / "plantcad2-tiny"
QUICK = dict(max_steps=2, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only add overhead
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    return make_dna_task(40, 24, motif="GATTACA", random_state=0)


@pytest.fixture(scope="module")
def full_classifier(tmp_path_factory, task):
    "A fully fine-tuned classifier saved to a folder (a checkpoint that already has a 2-class head)."
    seqs, y = task
    fitted = FinetuneClassifier(PS, method="full", **QUICK).fit(seqs, y)
    return fitted, fitted.save_pretrained(tmp_path_factory.mktemp("full") / "model")


# --- bad labels ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("y, exc, fragments", [
    (np.zeros(39, int), ValueError, ["40 sequences but y has 39 entries", "match one-to-one"]),
    (np.zeros((40, 2), int), ValueError, ["y must be 1-D", "got shape (40, 2)", "one target at a time"]),
    ([[1, 2]] * 20 + [[3]] * 20, ValueError, ["y must be 1-D", "nested lists of different lengths"]),
    (None, TypeError, ["y must be a list or array with one label or value per sequence, got NoneType"]),
    (np.linspace(0, 1, 40), ValueError, ["y holds continuous values", "For a numeric target use FinetuneRegressor"]),
    (np.zeros(40, int), ValueError, ["y has a single class", "needs at least two"]),
    (np.array([1, "a"] * 20, dtype=object), TypeError, ["y mixes label types", "use one type for every label"]),
    (np.r_[np.nan, np.ones(39)], ValueError, ["y has 1 missing (NaN/None) or infinite values (rows [0])", "drop those"]),
])
def test_classifier_rejects_bad_labels(task, y, exc, fragments):
    with pytest.raises(exc) as error:
        FinetuneClassifier(PS, **QUICK).fit(task[0], y)
    assert all(f in str(error.value) for f in fragments), str(error.value)


@pytest.mark.parametrize("y, exc, fragments", [
    (["a"] * 40, TypeError, ["FinetuneRegressor needs numeric y", "for class labels use FinetuneClassifier"]),
    (np.ones(40), ValueError, ["y is constant (1.0)", "nothing to learn"]),
    (np.r_[np.inf, np.ones(39)], ValueError, ["infinite values (rows [0])"]),
])
def test_regressor_rejects_bad_targets(task, y, exc, fragments):
    with pytest.raises(exc) as error:
        FinetuneRegressor(PS, **QUICK).fit(task[0], y)
    assert all(f in str(error.value) for f in fragments), str(error.value)


def test_cross_validation_checks_labels_before_training(task):
    with pytest.raises(ValueError, match="y has a single class"):
        cross_validate_finetune(FinetuneClassifier(PS, **QUICK), task[0], np.ones(40, int), progress=False)
    with pytest.raises(TypeError, match="estimator must be a FinetuneClassifier or FinetuneRegressor, got LogisticRegression"):
        from sklearn.linear_model import LogisticRegression
        cross_validate_finetune(LogisticRegression(), *task, progress=False)


# --- bad sequences, parameters and models ---------------------------------------------------------------------------

def test_rejects_invalid_dna_naming_the_sequence(task):
    seqs, y = task
    with pytest.raises(InvalidSequenceError, match=r"sequence '39' has non-DNA characters 'X' \(first at position 3\)"):
        FinetuneClassifier(PS, **QUICK).fit(seqs[:-1] + ["ACGXT"], y)
    with pytest.raises(TypeError, match=r"got a single sequence; wrap it in a list: \[seq\]"):
        FinetuneClassifier(PS, **QUICK).fit("ACGT", [0])


@pytest.mark.parametrize("params, fragments", [
    (dict(method="adapter"), ["method must be one of ('lora', 'full', 'head'), got 'adapter'"]),
    (dict(max_steps=0), ["max_steps must be a positive integer, got 0"]),
    (dict(batch_size=0), ["batch_size must be a positive integer, got 0"]),
    (dict(lora_r=2.5), ["lora_r must be a positive integer, got 2.5"]),
    (dict(learning_rate=-1.0), ["learning_rate must be positive", "got -1.0"]),
    (dict(pooling="first"), ["pooling='first' reads one end", "use one of ('mean', 'max', 'center'), or rc_invariant=False"]),
    (dict(validation_fraction=1.5), ["validation_fraction must be in [0, 1)", "got 1.5"]),
])
def test_rejects_bad_parameters(task, params, fragments):
    with pytest.raises(ValueError) as error:
        FinetuneClassifier(PS, progress=False, **{"max_steps": 2, **params}).fit(*task)
    assert all(f in str(error.value) for f in fragments), str(error.value)


def test_rejects_lora_targets_the_model_lacks(task):
    with pytest.raises(ValueError) as error:
        FinetuneClassifier(PLANTCAD2, lora_targets=["in_proj", "x_proj"], **QUICK).fit(*task)
    assert "LoRA target modules ['x_proj'] do not exist in this mamba2 model" in str(error.value)
    assert "its mixers' LoRA targets are ['in_proj', 'out_proj']. Pass lora_targets=" in str(error.value)
    with pytest.raises(ValueError, match=r"\['q_proj'\] do not exist in this mamba1 model"):
        FinetuneClassifier(PH, lora_targets="q_proj", **QUICK).fit(*task)


def test_rejects_models_that_are_not_caduceus(task, tmp_path):
    with pytest.raises(TypeError, match="got Linear. Load it with dnallm_nb.load.load_model_and_tokenizer"):
        FinetuneClassifier(torch.nn.Linear(2, 2), object(), **QUICK).fit(*task)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TypeError, match="holds a 'bert' model, not a Caduceus-family one"):
        FinetuneClassifier(tmp_path, **QUICK).fit(*task)
    mlm = CaduceusForMaskedLM.from_pretrained(PS)
    with pytest.raises(ValueError, match="a loaded model needs its tokenizer: pass tokenizer="):
        FinetuneClassifier(mlm, **QUICK).fit(*task)


def test_rejects_a_model_without_the_requested_head(task, full_classifier):
    fitted, folder = full_classifier
    with pytest.raises(ValueError) as error:  # a 2-class head, asked for 3 classes
        FinetuneClassifier(folder, **QUICK).fit(task[0], np.arange(40) % 3)
    assert "already a sequence classifier with a 2-output single_label_classification head" in str(error.value)
    assert "needs a 3-output single_label_classification head. Fine-tune its base checkpoint instead" in str(error.value)
    with pytest.raises(ValueError, match="needs a 1-output regression head"):
        FinetuneRegressor(folder, **QUICK).fit(task[0], np.linspace(0, 1, 40))
    backbone, tokenizer = load_model_and_tokenizer(folder)  # the fix the message names: its backbone gets a new head
    assert FinetuneClassifier(backbone, tokenizer, **QUICK).fit(task[0], np.arange(40) % 3).predict_proba(task[0][:2]).shape == (2, 3)
    mlm = CaduceusForMaskedLM.from_pretrained(PS)  # the lower-level functions need a sequence-classification head
    for call in (lambda: predict_logits(mlm, [np.array([3, 4, 5])]), lambda: trainable_model(mlm, "lora"),
                 lambda: train_classifier(mlm, [np.array([3, 4])], torch.tensor([0]), np.array([0]), np.array([]),
                                          learning_rate=1e-3)):
        with pytest.raises(TypeError, match=r"CaduceusForMaskedLM has no sequence-classification head \(`score`\); "
                                            r"put one on its backbone with sequence_classifier"):
            call()


def test_unfitted_estimator_says_fit_first(task):
    for estimator in (FinetuneClassifier(PS), FinetuneRegressor(PS)):
        with pytest.raises(NotFittedError, match="not fitted yet. Call 'fit'"):
            estimator.predict(task[0])


def test_compare_with_controls_needs_a_kmer_baseline(task):
    model, tokenizer = load_model_and_tokenizer(PS)
    layers = probe_layers(model, tokenizer, *task, controls=["gc"], cv=3, progress=False)
    with pytest.raises(ValueError, match="layers has no k-mer baseline; run probe_layers with 'kmer' in controls"):
        compare_with_controls(layers, {})


# --- regression, round trips, scikit-learn ---------------------------------------------------------------------------

def gc_task(n: int, length: int = 48, seed: int = 0) -> tuple[list[str], np.ndarray]:
    "Random sequences whose G+C probability varies from 0.1 to 0.9; the target is their GC content."
    rng = np.random.default_rng(seed)
    seqs = []
    for p in rng.uniform(0.1, 0.9, n):
        seqs.append("".join(rng.choice(list("ACGT"), length, p=[(1 - p) / 2, p / 2, p / 2, (1 - p) / 2])))
    return seqs, gc_content(seqs)[:, 0]


@pytest.fixture(scope="module")
def gc_regressor():
    seqs, y = gc_task(200)
    return FinetuneRegressor(PS, max_steps=80, progress=False).fit(seqs[:150], y[:150]), seqs[150:], y[150:]


def test_regressor_learns_gc_content(gc_regressor):
    regressor, test_seqs, test_y = gc_regressor
    predictions = regressor.predict(test_seqs)
    assert predictions.shape == (50,) and predictions.dtype == np.float64
    assert regressor.score(test_seqs, test_y) >= 0.8  # R² on held-out sequences; predicting the mean scores 0
    assert abs(predictions.mean() - test_y.mean()) < 0.05  # back in the targets' units, not standardised


def test_regressor_adapter_round_trip(gc_regressor, tmp_path):
    regressor, test_seqs, _ = gc_regressor
    reloaded = load_finetuned(regressor.save_pretrained(tmp_path / "adapter"))
    assert isinstance(reloaded, FinetuneRegressor) and reloaded.y_scale_ == regressor.y_scale_
    assert np.array_equal(reloaded.predict(test_seqs), regressor.predict(test_seqs))
    merged = load_finetuned(regressor.save_pretrained(tmp_path / "merged", merge=True))
    assert np.abs(merged.predict(test_seqs) - regressor.predict(test_seqs)).max() <= 1e-6


def test_full_fine_tune_round_trip(task, full_classifier):
    fitted, folder = full_classifier
    assert json.loads((folder / "finetune.json").read_text())["adapter"] is False
    reloaded = load_finetuned(folder)
    assert reloaded.method == "full" and list(reloaded.classes_) == [0, 1]
    assert np.array_equal(reloaded.predict_proba(task[0]), fitted.predict_proba(task[0]))
    with pytest.raises(ValueError, match="holds a whole fine-tuned model, which loads on its own; base_model= is for LoRA"):
        load_finetuned(folder, base_model=PS)


def test_adapter_refuses_another_base_model(task, tmp_path):
    folder = FinetuneClassifier(PS, **QUICK).fit(*task).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="was trained on a base model with .*'rcps': True.* but base_model has .*'rcps': False"):
        load_finetuned(folder, base_model=PH)  # same width and depth: peft alone would load part of the adapter
    with pytest.raises(FileNotFoundError, match="has no finetune.json"):
        load_finetuned(PS)


def test_sklearn_clone_and_params(task):
    estimator = FinetuneClassifier(PS, method="head", learning_rate=0.05, pooling="center", **QUICK)
    params = estimator.get_params()
    assert params["method"] == "head" and params["learning_rate"] == 0.05 and params["model"] == PS
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == params
    fitted = estimator.fit(*task)
    assert hasattr(fitted, "model_") and not hasattr(clone(fitted), "model_")  # a clone is unfitted
    assert clone(estimator).set_params(method="full").method == "full"
    assert 0 <= fitted.score(*task) <= 1  # ClassifierMixin: accuracy
    assert set(fitted.predict(task[0])) <= {0, 1}


def test_string_labels_come_back_as_strings(task):
    seqs, y = task
    labels = np.where(y == 1, "site", "background")
    fitted = FinetuneClassifier(PS, **QUICK).fit(seqs, labels)
    assert list(fitted.classes_) == ["background", "site"] and set(fitted.predict(seqs)) <= {"background", "site"}
