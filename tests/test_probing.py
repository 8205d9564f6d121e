"""Probes, features, leakage-free folds and controls (dnallm_nb.probing)."""
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from dnallm_nb.testing import golden_path
import dnallm_nb.probing as probing
from dnallm_nb.dna import InvalidSequenceError, reverse_complement
from dnallm_nb.embeddings import extract_embeddings
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.probing import (CONTROLS, GlobalScaler, LayerProbeResult, ProbeResult, combine_groups, compare_probes,
                               gc_content, interval_groups, kmer_features, kmer_names, make_dna_task, make_folds, probe,
                               probe_layers, random_init_like, rc_groups)


@pytest.fixture(scope="module", autouse=True)
def single_blas_thread():
    "These probes are small: BLAS threads only add overhead (and contention on shared machines)."
    with threadpool_limits(1):
        yield


def fold_of(folds):
    "Test-fold number of each sample."
    out = np.full(sum(len(test) for _, test in folds), -1)
    for f, (_, test) in enumerate(folds):
        out[test] = f
    return out


def naive_kmer_counts(seq, k, canonical=False):
    "Reference k-mer counts by plain Python."
    names = kmer_names(k, canonical)
    s = seq.upper()
    counts = dict.fromkeys(names, 0)
    for i in range(len(s) - k + 1):
        kmer = s[i:i + k]
        if "N" in kmer:
            continue
        counts[min(kmer, reverse_complement(kmer)) if canonical else kmer] += 1
    return [counts[n] for n in names]


@pytest.fixture(scope="module")
def motif_task():
    seqs, y = make_dna_task(600, 200, motif="TATAAT", random_state=0)
    return seqs, y, kmer_features(seqs, 6)


# ---------------------------------------------------------------- features

@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("canonical", [False, True])
def test_kmer_features_match_python_counts(k, canonical):
    rng = np.random.default_rng(k)
    seqs = ["".join(rng.choice(list("ACGTNacgtn"), size=int(n), p=[.2, .2, .2, .2, .02, .04, .04, .04, .04, .02]))
            for n in rng.integers(1, 40, size=25)]
    counts = kmer_features(seqs, k, normalize=False, canonical=canonical)
    assert counts.shape == (25, len(kmer_names(k, canonical))) and counts.dtype == np.float32
    assert counts.tolist() == [naive_kmer_counts(s, k, canonical) for s in seqs]
    freqs = kmer_features(seqs, k, canonical=canonical)
    totals = counts.sum(1)
    assert np.allclose(freqs[totals > 0].sum(1), 1) and (freqs[totals == 0] == 0).all()


def test_kmer_features_chunking_gives_identical_counts(monkeypatch):
    seqs, _ = make_dna_task(50, 60, motif="TATAAT", random_state=3)
    seqs = [s[:10 + i] + "N" + s[10 + i:] for i, s in enumerate(seqs)]
    whole = kmer_features(seqs, 4, normalize=False)
    monkeypatch.setattr(probing, "_MAX_BINS", 3 * 256)  # 3 rows per chunk
    monkeypatch.setattr(probing, "_MAX_BASES", 100)     # and at most ~100 bases
    assert (kmer_features(seqs, 4, normalize=False) == whole).all()


def test_kmer_names_order_and_canonical_merge():
    assert kmer_names(2) == ["".join(p) for p in product("ACGT", repeat=2)]
    assert len(kmer_names(6, canonical=True)) == 2080 and len(kmer_names(5, canonical=True)) == 512
    x = kmer_features(["GATTACA", reverse_complement("GATTACA")], 3, canonical=True)
    assert (x[0] == x[1]).all()


def test_gc_content():
    gc = gc_content(["GGCC", "atgc", "ANNG", "NNNN", "ATAT", "GCNNNNNNNNA"])
    assert gc.shape == (6, 1) and gc.dtype == np.float64
    assert gc[[0, 1, 2, 4], 0].tolist() == [1.0, 0.5, 0.5, 0.0] and np.isnan(gc[3, 0])
    assert np.isclose(gc[5, 0], 2 / 3)


@pytest.mark.parametrize("fn", [gc_content, lambda s: kmer_features(s, 3), rc_groups])
def test_feature_input_errors(fn):
    with pytest.raises(InvalidSequenceError, match=r"'1'.*'X'"):
        fn(["ACGT", "ACXT"])
    with pytest.raises(InvalidSequenceError, match="empty"):
        fn(["ACGT", ""])
    with pytest.raises(TypeError, match="wrap it in a list"):
        fn("ACGT")
    with pytest.raises(ValueError, match="sequences is empty"):
        fn([])


@pytest.mark.parametrize("k", [0, 7, 2.0, True])
def test_kmer_k_out_of_range(k):
    with pytest.raises(ValueError, match="1 to 6"):
        kmer_features(["ACGT"], k)


def test_make_dna_task():
    seqs, y = make_dna_task(100, 50, motif="tataat", gc=(0.2, 0.8), random_state=4)
    assert len(seqs) == 100 and {len(s) for s in seqs} == {50} and np.bincount(y).tolist() == [50, 50]
    assert all("TATAAT" in s for s, label in zip(seqs, y) if label)
    gc_seqs, gc_y = make_dna_task(100, 50, gc=(0.2, 0.8), random_state=4)
    gc = gc_content(gc_seqs)[:, 0]
    assert gc[gc_y == 0].mean() < 0.25 and gc[gc_y == 1].mean() > 0.75
    again = make_dna_task(100, 50, motif="tataat", gc=(0.2, 0.8), random_state=4)
    assert again[0] == seqs and (again[1] == y).all()
    with pytest.raises(InvalidSequenceError):
        make_dna_task(10, 50, motif="TANNAT")


# ---------------------------------------------------------------- groups and folds

@pytest.mark.parametrize("random_state", [0, 1, 2])
def test_rc_pairs_share_a_fold(random_state):
    seqs, y = make_dna_task(300, 40, motif="TATAAT", random_state=random_state)
    both, y2 = seqs + [reverse_complement(s).lower() for s in seqs], np.concatenate([y, y])
    folds = fold_of(make_folds(y2, groups=rc_groups(both), cv=5, random_state=random_state))
    assert (folds >= 0).all() and (folds[:300] == folds[300:]).all()
    leaky = fold_of(make_folds(y2, cv=5, random_state=random_state))
    assert (leaky[:300] != leaky[300:]).sum() > 150  # without groups the pairs are split: the check can fail


def test_user_groups_are_honoured_alone_and_combined():
    seqs, y = make_dna_task(400, 40, random_state=5)
    both, y2 = seqs + [reverse_complement(s) for s in seqs], np.concatenate([y, y])
    blocks = np.arange(800) % 400 // 25  # 16 genomic blocks; strand copies share a block
    for groups in (blocks, combine_groups(rc_groups(both), blocks)):
        folds = make_folds(y2, groups=groups, cv=4)
        f = fold_of(folds)
        assert all(len(set(f[blocks == b])) == 1 for b in range(16))
        for train, test in folds:
            assert not set(blocks[train]) & set(blocks[test])


def test_combine_groups_is_transitive():
    assert combine_groups([0, 0, 1, 2, 3], ["a", "b", "b", "c", "c"]).tolist() == [0, 0, 0, 1, 1]
    assert combine_groups([5, 6, 7]).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="different lengths"):
        combine_groups([0, 1], [0])
    with pytest.raises(ValueError, match="missing"):
        combine_groups([0, 1], [0, None])


def test_interval_groups():
    groups = interval_groups(["1", "1", "1", "2", "1", "2"], [0, 50, 200, 0, 99, 100], [100, 150, 300, 100, 120, 200])
    assert groups.tolist() == [0, 0, 1, 2, 0, 3]
    assert interval_groups(["1", "1"], [0, 110], [100, 200], min_gap=20).tolist() == [0, 0]
    assert interval_groups(["1", "1"], [0, 120], [100, 200], min_gap=20).tolist() == [0, 1]
    with pytest.raises(ValueError, match="end <= start"):
        interval_groups(["1"], [10], [5])


def test_make_folds_accepts_splitters_and_fold_lists():
    y = np.array([0, 1] * 30)
    from_splitter = make_folds(y, cv=StratifiedKFold(3))
    assert len(from_splitter) == 3 and sorted(np.concatenate([t for _, t in from_splitter]).tolist()) == list(range(60))
    again = make_folds(y, cv=[(list(tr), list(te)) for tr, te in from_splitter])
    assert all((a[1] == b[1]).all() for a, b in zip(again, from_splitter))
    grouped = make_folds(y, groups=np.arange(60) // 4, cv=GroupKFold(3))
    assert len(grouped) == 3
    reg = make_folds(np.linspace(0, 1, 20), cv=4)
    assert sorted(len(t) for _, t in reg) == [5, 5, 5, 5]


@pytest.mark.parametrize("kwargs, message", [
    (dict(y=[0, 1] * 10, groups=[0, 1, 2] * 6 + [0, 1], cv=5), "only 3 distinct groups for cv=5.*Lower cv to 3"),
    (dict(y=[0] * 20 + [1] * 3, cv=5), "class 1 has only 3 samples, but cv=5.*Lower cv to 3"),
    (dict(y=[0] * 20 + [1] * 1, cv=5), "class 1 has only 1 samples.*Add samples"),
    (dict(y=[0, 1] * 20, groups=[0, 1] * 20, cv=2), "class 0 has only 1 groups"),
    (dict(y=[0, 1, 2, 3, 4, 5] * 3 + [6], cv=3), "task='regression'"),
    (dict(y=["a"] * 10, cv=2), "single class 'a'"),
    (dict(y=[0, 1] * 5, cv=1), "at least 2 folds"),
    (dict(y=[0, 1] * 5, cv=11), "only 10 samples"),
    (dict(y=[0, 1] * 5, cv=2, task="ordinal"), "unknown task"),
    (dict(y=[0, 1] * 5, cv=2.5), "cv must be a number of folds"),
    (dict(y=[0, 1, 2] * 5, cv=2, task="binary"), "task='multiclass'"),
    (dict(y=[0, 1] * 5, cv=2, task="multiclass"), "task='binary'"),
    (dict(y=["a", "b"] * 5, cv=2, task="regression"), "numeric y"),
    (dict(y=[0.5, np.nan, 0.2, 0.1], cv=2), "NaN or inf"),
    (dict(y=[0, 1] * 10, groups=[0, 1], cv=2), "one id per sample"),
    (dict(y=[0, 1] * 10, cv=[(np.arange(1, 20), np.arange(10)), (np.arange(10), np.arange(10, 20))]), "both train and test"),
    (dict(y=[0, 1] * 10, cv=[(np.arange(10, 20), np.arange(10)), (np.arange(10), np.arange(10, 19))]), "partition"),
    (dict(y=[0, 1] * 10, groups=np.arange(20) // 4,
          cv=[(np.arange(2, 20), np.arange(2)), (np.arange(2), np.arange(2, 20))]), "leakage"),
    (dict(y=[0] * 10 + [1] * 10, cv=[(np.arange(10, 20), np.arange(10)), (np.arange(10), np.arange(10, 20))]),
     "fold 0's test set has no samples of class 1"),
])
def test_make_folds_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_folds(kwargs.pop("y"), **kwargs)


# ---------------------------------------------------------------- probe

def test_planted_motif_is_found_by_kmers(motif_task):
    seqs, y, X6 = motif_task
    folds = make_folds(y, groups=rc_groups(seqs), cv=5)
    kmers = probe(X6, y, cv=folds, scale="global")
    assert kmers.summary().loc["auroc", "mean"] >= 0.95
    assert kmers.summary().loc["auprc", "mean"] >= 0.95
    assert list(kmers.fold_metrics.columns) == ["accuracy", "balanced_accuracy", "mcc", "f1", "auroc", "auprc"]
    assert kmers.scores.shape == (600,) and ((0 <= kmers.scores) & (kmers.scores <= 1)).all()
    assert [t.tolist() for _, t in kmers.folds] == [t.tolist() for _, t in folds]
    # standardising 4096 sparse frequencies per feature drowns the motif: the reason for scale="global"
    assert probe(X6, y, cv=folds).summary().loc["auroc", "mean"] < 0.9


@pytest.mark.parametrize("random_state", [0, 1, 2])
def test_shuffled_labels_give_chance(random_state):
    seqs, y = make_dna_task(2000, 100, motif="TATAAT", random_state=random_state)
    X = kmer_features(seqs, 3)
    real = probe(X, y, random_state=random_state)
    null = probe(X, y, permute_labels=True, random_state=random_state)
    assert real.summary().loc["auroc", "mean"] > 0.7
    assert abs(null.summary().loc["auroc", "mean"] - 0.5) <= 0.05
    assert null.permuted_labels and sorted(null.y_true.tolist()) == sorted(y.tolist())
    for _, test in null.folds:  # labels shuffled within each test fold: per-fold counts kept
        assert np.bincount(null.y_true[test]).tolist() == np.bincount(y[test]).tolist()
    assert [t.tolist() for _, t in null.folds] == [t.tolist() for _, t in real.folds]


def test_gc_task_is_solved_by_gc_content():
    seqs, y = make_dna_task(600, 200, gc=(0.45, 0.55), random_state=1)
    folds = make_folds(y, cv=5)
    table = compare_probes({"gc": probe(gc_content(seqs), y, cv=folds),
                            "null": probe(gc_content(seqs), y, cv=folds, permute_labels=True)}, baseline="null")
    assert table.loc["gc", "mean"] >= 0.95 and table.loc["gc", "selectivity"] > 0.35
    assert table.loc["null", "selectivity"] == 0 and list(table.columns) == ["mean", "sd", "selectivity", "selectivity_sd"]


@pytest.mark.parametrize("estimator", ["logistic", "ridge", "mlp"])
def test_determinism(estimator):
    seqs, y = make_dna_task(300, 100, gc=(0.4, 0.6), random_state=2)
    X = kmer_features(seqs, 2)
    a, b = probe(X, y, estimator=estimator), probe(X, y, estimator=estimator)
    assert a.fold_metrics.equals(b.fold_metrics) and (a.scores == b.scores).all()
    assert (a.predictions == b.predictions).all()
    c, d = (probe(X, y, estimator=estimator, permute_labels=True) for _ in range(2))
    assert (c.y_true == d.y_true).all() and c.fold_metrics.equals(d.fold_metrics)


class MeanRecorder(ClassifierMixin, BaseEstimator):
    "Records the column means of the (scaled) matrix it is trained on."
    seen: list = []

    def fit(self, X, y):
        MeanRecorder.seen.append(np.abs(X.mean(0)).max())
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.zeros(len(X), dtype=int)

    def decision_function(self, X):
        return X[:, 0]


def test_scaler_is_fitted_per_fold_only_on_training_rows():
    rng = np.random.default_rng(0)
    X, y = rng.normal(3, 2, size=(100, 4)), np.array([0, 1] * 50)
    MeanRecorder.seen = []
    for scale in ("standard", "global"):
        probe(X, y, estimator=MeanRecorder(), scale=scale, cv=4)
    assert len(MeanRecorder.seen) == 8 and max(MeanRecorder.seen) < 1e-12  # centred on exactly its own rows


def test_global_scaler_keeps_relative_variances():
    X = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 13.0]])
    s = GlobalScaler().fit(X)
    Z = s.transform(X)
    assert np.allclose(Z.mean(0), 0) and np.isclose(Z.var(0).mean(), 1)
    assert np.isclose(Z.var(0)[0] / Z.var(0)[1], X.var(0)[0] / X.var(0)[1])


def test_multiclass_path():
    parts = [make_dna_task(240, 100, motif=m, random_state=i) for i, m in enumerate(["TATAAT", "GGGCCC", "CACGTG"])]
    seqs = [s for ss, lab in parts for s, label in zip(ss, lab) if label == 1]
    y = np.repeat(np.array(["tata", "gc", "ebox"]), 120)
    r = probe(kmer_features(seqs, 6, canonical=True), y, groups=rc_groups(seqs), cv=4, scale="global")
    assert r.task == "multiclass" and r.classes.tolist() == ["ebox", "gc", "tata"] and r.primary_metric == "auroc_macro"
    assert r.summary().index.tolist() == ["accuracy", "balanced_accuracy", "mcc", "f1_macro", "auroc_macro", "auprc_macro"]
    assert r.summary().loc["auroc_macro", "mean"] > 0.9 and r.scores.shape == (360, 3)
    assert np.allclose(r.scores.sum(1), 1) and set(r.predictions) <= {"ebox", "gc", "tata"}
    ridge = probe(kmer_features(seqs, 6, canonical=True), y, estimator="ridge", cv=4, scale="global")
    assert ridge.scores.shape == (360, 3) and ridge.summary().loc["auroc_macro", "mean"] > 0.9  # decision scores
    fig = r.plot()
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "Predicted label"


def test_regression_path():
    seqs, _ = make_dna_task(300, 150, random_state=3)
    y = gc_content(seqs)[:, 0] + np.random.default_rng(0).normal(0, 0.01, 300)
    r = probe(kmer_features(seqs, 1), y)
    assert r.task == "regression" and r.estimator == "ridge" and r.classes is None and r.primary_metric == "r2"
    assert r.summary().index.tolist() == ["r2", "pearson", "spearman"] and r.summary().loc["pearson", "mean"] > 0.9
    assert r.predictions.dtype == np.float64 and (r.scores == r.predictions).all()
    mlp = probe(kmer_features(seqs, 1), y, estimator="mlp")
    assert mlp.estimator == "mlp"
    assert r.plot().axes[0].get_xlabel() == "true"


def test_binary_plot_and_repr(motif_task):
    seqs, y, X6 = motif_task
    r = probe(gc_content(seqs), y, cv=3)
    fig = r.plot()
    assert [ax.get_xlabel() for ax in fig.axes] == ["false positive rate", "recall"]
    assert len(fig.axes[0].lines) == 4  # 3 folds + chance
    assert repr(r).startswith("ProbeResult(binary, logistic, n=600, folds=3, auroc=") and "fitted=False" in repr(r)
    assert "permuted labels" in repr(probe(gc_content(seqs), y, cv=3, permute_labels=True))


def test_string_labels_and_sklearn_estimator():
    seqs, y = make_dna_task(200, 100, gc=(0.3, 0.7), random_state=6)
    labels = np.where(y == 1, "rich", "poor")
    r = probe(gc_content(seqs), labels, estimator=LinearSVC())
    assert r.estimator == "LinearSVC" and r.classes.tolist() == ["poor", "rich"]
    assert r.pipeline.steps[-1][1].random_state == 0  # seeded from random_state
    assert r.summary().loc["auroc", "mean"] > 0.95 and set(r.predictions) <= {"poor", "rich"}


def test_save_load_round_trip(tmp_path, motif_task):
    seqs, y, X6 = motif_task
    r = probe(X6, y, scale="global", cv=3)
    with pytest.raises(ValueError, match="fit_final"):
        r.save(tmp_path / "p.joblib")
    with pytest.raises(ValueError, match="fit_final"):
        r.predict(X6)
    r.fit_final()
    back = ProbeResult.load(r.save(tmp_path / "p.joblib"))
    assert (back.predict(X6) == r.predict(X6)).all() and (back.predict_scores(X6) == r.predict_scores(X6)).all()
    assert back.fold_metrics.equals(r.fold_metrics) and back._X is None and r._X is not None
    assert (tmp_path / "p.joblib").stat().st_size < X6.nbytes / 4  # training matrix not written
    with pytest.raises(ValueError, match="loaded from disk"):
        back.fit_final()
    with pytest.raises(ValueError, match="10 features but the probe was trained on 4096"):
        back.predict(X6[:, :10])
    import joblib
    joblib.dump({"not": "a probe"}, tmp_path / "other.joblib")
    with pytest.raises(TypeError, match="not a ProbeResult"):
        ProbeResult.load(tmp_path / "other.joblib")


def test_compare_probes_needs_the_same_folds(motif_task):
    seqs, y, _ = motif_task
    gc = gc_content(seqs)
    a, b = probe(gc, y, cv=5), probe(gc, y, cv=5, random_state=1)
    with pytest.raises(ValueError, match="different folds"):
        compare_probes({"a": a, "b": b})
    with pytest.raises(ValueError, match="baseline 'c'"):
        compare_probes({"a": a}, baseline="c")
    with pytest.raises(ValueError, match="no metric 'r2'"):
        compare_probes({"a": a}, metric="r2")
    assert compare_probes({"a": a}, metric="mcc").index.name == "mcc"


@pytest.fixture()
def small():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 3)), np.array([0, 1] * 30)


@pytest.mark.parametrize("make_call, error, message", [
    (lambda X, y: probe(X, y[:-1]), ValueError, "X has 60 rows but y has 59"),
    (lambda X, y: probe(X, np.zeros(60)), ValueError, "single class 0.0"),
    (lambda X, y: probe(np.where(np.arange(60)[:, None] == 7, np.inf, X), y), ValueError, r"NaN or inf values in 1 rows \(first: \[7\]\).*impute"),
    (lambda X, y: probe(np.where(np.arange(60)[:, None] == 3, np.nan, X), y), ValueError, "NaN or inf"),
    (lambda X, y: probe(X[:, 0], y), ValueError, r"reshape\(-1, 1\)"),
    (lambda X, y: probe(X.astype(str), y), TypeError, "numeric"),
    (lambda X, y: probe(X, y, estimator="svm"), ValueError, "unknown estimator 'svm'"),
    (lambda X, y: probe(X, y, estimator=Ridge()), ValueError, "not a scikit-learn classifier"),
    (lambda X, y: probe(X, X[:, 0], estimator="logistic"), ValueError, "classifier but the task is regression"),
    (lambda X, y: probe(X, y, estimator=42), TypeError, "str or a scikit-learn estimator"),
    (lambda X, y: probe(X, y, scale="minmax"), ValueError, "unknown scale 'minmax'"),
    (lambda X, y: probe(X, y, groups=np.arange(60) % 3), ValueError, "only 3 distinct groups for cv=5.*Lower cv to 3"),
    (lambda X, y: probe(X[:12], [0] * 9 + [1] * 3), ValueError, "class 1 has only 3 samples.*Lower cv to 3"),
    (lambda X, y: probe(X, np.stack([y, y], 1)), ValueError, "1-D"),
])
def test_probe_errors(small, make_call, error, message):
    X, y = small
    with pytest.raises(error, match=message):
        make_call(X, y)


# ---------------------------------------------------------------- probe_layers

GOLDEN = golden_path()
LAYER_NAMES = [f"{kind}layer {layer}" for kind in ("", "random-init ", "shuffled ") for layer in (0, 1, 2)]
ALL_NAMES = LAYER_NAMES + [f"{k}-mers" for k in range(1, 7)] + ["GC content"]


def same_folds(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for fa, fb in zip(a, b) for x, y in zip(fa, fb))


@pytest.fixture(scope="module")
def ps_model():
    model, tokenizer = load_model_and_tokenizer(GOLDEN / "caduceus-ps-tiny")
    return model, tokenizer


@pytest.fixture(scope="module")
def layer_run(ps_model):
    "probe_layers with every control on a planted-motif task (200 x 100 bp), and the model's state before the call."
    model, tokenizer = ps_model
    seqs, y = make_dna_task(200, 100, motif="TATAAT", random_state=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    result = probe_layers(model, tokenizer, seqs, y, progress=False)
    return seqs, y, result, before, rng_before


def test_probe_layers_runs_with_all_controls(layer_run):
    seqs, y, res, _, _ = layer_run
    assert isinstance(res, LayerProbeResult) and list(res.results) == ALL_NAMES
    assert res.layers == [0, 1, 2] and res.task == "binary" and res.primary_metric == "auroc"
    assert res.results["shuffled layer 1"].permuted_labels and not res.results["layer 1"].permuted_labels
    assert repr(res).startswith("LayerProbeResult(binary, n=200, layers=[0, 1, 2], folds=5, 16 probes; best layer ")
    assert "best baseline 6-mers" in repr(res)
    assert res.best_layer == max(res.layers, key=lambda layer: res.results[f"layer {layer}"].fold_metrics["auroc"].mean())
    # embeddings are standardised per feature, k-mer frequencies scaled globally
    assert type(res.results["layer 2"].pipeline[0]).__name__ == "StandardScaler"
    assert all(type(res.results[f"{k}-mers"].pipeline[0]) is GlobalScaler for k in range(1, 7))
    assert res.results["6-mers"]._X.shape == (200, 4096) and res.results["GC content"]._X.shape == (200, 1)


def test_probe_layers_uses_one_set_of_folds(layer_run):
    seqs, y, res, _, _ = layer_run
    assert same_folds(res.folds, make_folds(y, groups=rc_groups(seqs), cv=5, random_state=0))
    assert all(same_folds(r.folds, res.folds) for r in res.results.values())  # every layer and every control
    assert (res.groups == rc_groups(seqs)).all()
    assert res.compare().index.tolist() == ALL_NAMES  # compare_probes checks the folds too


def test_kmer_control_finds_the_planted_motif(layer_run):
    _, _, res, _, _ = layer_run
    assert res.results["6-mers"].summary().loc["auroc", "mean"] >= 0.95
    assert res.best_baseline() == "6-mers" and res.best_baseline(kmers_only=True) == "6-mers"
    for layer in (0, 1, 2):  # shuffled labels: chance, with the per-fold label counts kept
        shuffled = res.results[f"shuffled layer {layer}"]
        assert abs(shuffled.summary().loc["auroc", "mean"] - 0.5) < 0.1
        for _, test in res.folds:
            assert np.bincount(shuffled.y_true[test]).tolist() == np.bincount(layer_run[1][test]).tolist()


def test_summary_rows_match_the_probes(layer_run):
    _, _, res, _, _ = layer_run
    table = res.summary()
    assert table.index.tolist() == [0, 1, 2] and table.index.name == "layer"
    others = [c for m in ["accuracy", "balanced_accuracy", "mcc", "f1", "auprc"] for c in (m, f"{m}_sd")]
    assert table.columns.tolist() == ["auroc", "auroc_sd", "random_init", "shuffled", "sel_shuffled", "sel_shuffled_sd",
                                      "sel_baseline", "sel_baseline_sd"] + others
    assert table.attrs["baseline"] == "6-mers"
    for layer in (0, 1, 2):
        model = res.results[f"layer {layer}"].fold_metrics["auroc"]
        shuffled = res.results[f"shuffled layer {layer}"].fold_metrics["auroc"]
        kmer = res.results["6-mers"].fold_metrics["auroc"]
        row = table.loc[layer]
        assert row["auroc"] == model.mean() and row["auroc_sd"] == model.std()
        assert row["random_init"] == res.results[f"random-init layer {layer}"].fold_metrics["auroc"].mean()
        assert row["shuffled"] == shuffled.mean()
        assert np.isclose(row["sel_shuffled"], (model - shuffled).mean()) and np.isclose(row["sel_shuffled_sd"], (model - shuffled).std())
        assert np.isclose(row["sel_baseline"], (model - kmer).mean()) and np.isclose(row["sel_baseline_sd"], (model - kmer).std())
        assert row["mcc"] == res.results[f"layer {layer}"].fold_metrics["mcc"].mean()
    mcc = res.summary("mcc")
    assert mcc.columns[:2].tolist() == ["mcc", "mcc_sd"] and "auroc" in mcc.columns
    with pytest.raises(ValueError, match="unknown metric 'r2' for a binary probe"):
        res.summary("r2")


def test_layer_plot_has_curves_error_bars_bands_and_chance(layer_run):
    _, y, res, _, _ = layer_run
    ax = res.plot().axes[0]
    bars = {c.get_label(): c for c in ax.containers}
    assert list(bars) == ["model", "random-init model", "shuffled labels"]
    for label, style in [("model", "-"), ("random-init model", "--"), ("shuffled labels", "-")]:
        line, _, (yerr,) = bars[label].lines
        assert line.get_linestyle() == style and len(line.get_ydata()) == 3 and len(yerr.get_segments()) == 3
    model_means = [res.results[f"layer {layer}"].fold_metrics["auroc"].mean() for layer in (0, 1, 2)]
    assert np.allclose(bars["model"].lines[0].get_ydata(), model_means)
    labelled = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(labelled) == ["6-mers (mean ± sd)", "GC content (mean ± sd)", "chance"]
    assert labelled["chance"].get_ydata()[0] == 0.5 and len(ax.patches) == 2
    assert ax.get_xticks().tolist() == [0, 1, 2]
    assert res.plot("mcc").axes[0].get_lines()[-1].get_ydata()[0] == 0       # chance MCC
    assert res.plot("auprc").axes[0].get_lines()[-1].get_ydata()[0] == y.mean()  # chance AUPRC = prevalence
    import matplotlib.pyplot as plt
    plt.close("all")


def test_probe_layers_leaves_the_model_and_global_rng_alone(ps_model, layer_run):
    model, _ = ps_model
    _, _, _, before, rng_before = layer_run
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng_before, torch.random.get_rng_state()) and not model.training


def test_random_init_control_embeds_a_seeded_fresh_model(ps_model, layer_run):
    model, tokenizer = ps_model
    seqs, _, res, _, _ = layer_run
    fresh = random_init_like(model, 0)
    assert type(fresh) is type(model) and not fresh.training and fresh.config.to_dict() == model.config.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), random_init_like(model, 0).state_dict().values()))
    assert not torch.equal(fresh.state_dict()["backbone.embeddings.word_embeddings.embedding.weight"],
                           model.state_dict()["backbone.embeddings.word_embeddings.embedding.weight"])
    emb = extract_embeddings(fresh, tokenizer, seqs, layers="all", progress=False)
    for layer in (0, 1, 2):
        assert np.array_equal(res.results[f"random-init layer {layer}"]._X, emb[layer])
        assert not np.array_equal(res.results[f"layer {layer}"]._X, emb[layer])
    with pytest.raises(TypeError, match="drop 'random_init' from controls"):
        random_init_like(torch.nn.Linear(2, 2))


def test_probe_layers_is_deterministic(ps_model):
    model, tokenizer = ps_model
    seqs, y = make_dna_task(80, 60, motif="TATAAT", random_state=3)
    a, b = (probe_layers(model, tokenizer, seqs, y, kmer_k=(2,), cv=3, progress=False) for _ in range(2))
    assert list(a.results) == LAYER_NAMES + ["2-mers", "GC content"]
    assert a.summary().equals(b.summary()) and a.compare().equals(b.compare())
    assert all((a.results[n].scores == b.results[n].scores).all() for n in a.results)
    c = probe_layers(model, tokenizer, seqs, y, kmer_k=(2,), cv=3, progress=False, random_state=1)
    assert not same_folds(a.folds, c.folds)


def test_probe_layers_controls_subset_layers_and_regression():
    model, tokenizer = load_model_and_tokenizer(GOLDEN / "caduceus-ph-tiny")  # plain layout: two passes for rc
    seqs, _ = make_dna_task(90, 60, gc=(0.3, 0.7), random_state=4)
    y = gc_content(seqs)[:, 0]
    res = probe_layers(model, tokenizer, seqs, y, layers=[-1, 1], controls=["shuffled", "gc"], cv=3, progress=False)
    assert res.task == "regression" and res.layers == [2, 1] and res.primary_metric == "r2"
    assert list(res.results) == ["layer 2", "layer 1", "shuffled layer 2", "shuffled layer 1", "GC content"]
    assert res.results["GC content"].summary().loc["r2", "mean"] > 0.99 and res.best_baseline() == "GC content"
    assert res.summary().columns[:7].tolist() == ["r2", "r2_sd", "shuffled", "sel_shuffled", "sel_shuffled_sd",
                                                   "sel_baseline", "sel_baseline_sd"]
    assert res.plot().axes[0].get_lines()[-1].get_label() == "chance"
    bare = probe_layers(model, tokenizer, seqs[:30], y[:30], layers=-1, controls=False, cv=3, progress=False)
    assert list(bare.results) == ["layer 2"] and bare.best_baseline() is None
    assert bare.summary().columns.tolist() == ["r2", "r2_sd", "pearson", "pearson_sd", "spearman", "spearman_sd"]
    assert "best baseline" not in repr(bare) and bare.by_layer("shuffled") == {}
    import matplotlib.pyplot as plt
    assert len(bare.plot().axes[0].containers) == 1
    plt.close("all")


def test_probe_layers_keeps_groups_and_strand_pairs_together(ps_model):
    model, tokenizer = ps_model
    seqs, y = make_dna_task(40, 50, motif="TATAAT", random_state=5)
    both, y2 = seqs + [reverse_complement(s) for s in seqs], np.concatenate([y, y])
    blocks = np.arange(80) % 40 // 4  # 10 genomic blocks
    res = probe_layers(model, tokenizer, both, y2, layers=-1, groups=blocks, controls=False, cv=3, progress=False)
    f = fold_of(res.folds)
    assert (f[:40] == f[40:]).all() and all(len(set(f[blocks == b])) == 1 for b in range(10))
    plain = probe_layers(model, tokenizer, both, y2, layers=-1, rc_safe=False, controls=False, cv=3, progress=False)
    assert plain.groups is None and same_folds(plain.folds, make_folds(y2, cv=3))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(controls=["kmers"]), ValueError, r"unknown control 'kmers'.*'random_init'"),
    (dict(controls="shuffle"), ValueError, "unknown control 'shuffle'"),
    (dict(y=np.zeros(200, dtype=int)[:-1]), ValueError, "200 sequences but y has 199 entries"),
    (dict(y=np.zeros(200, dtype=int)), ValueError, "single class 0"),
    (dict(y=np.zeros((200, 2))), ValueError, "1-D"),
    (dict(pooling="none"), ValueError, "one per sequence"),
    (dict(pooling="avg"), ValueError, "unknown pooling 'avg'"),
    (dict(kmer_k=(4, 7)), ValueError, "1 to 6"),
    (dict(kmer_k=(), controls=["kmer"]), ValueError, "kmer_k is empty"),
    (dict(sequences="ACGT"), TypeError, "wrap it in a list"),
    (dict(groups=np.arange(200) % 3), ValueError, "only 3 distinct groups for cv=5"),
    (dict(groups=np.arange(10)), ValueError, "one id per sample"),
    (dict(task="multiclass"), ValueError, "task='binary'"),
    (dict(estimator="svm"), ValueError, "unknown estimator 'svm'"),
    (dict(layers=3), IndexError, "layer 3 is out of range"),
])
def test_probe_layers_errors(ps_model, layer_run, kwargs, error, message):
    model, tokenizer = ps_model
    seqs, y, _, _, _ = layer_run
    call = dict(sequences=seqs, y=y, controls=False, progress=False) | kwargs
    with pytest.raises(error, match=message):
        probe_layers(model, tokenizer, call.pop("sequences"), call.pop("y"), **call)


def test_probe_layers_rejects_bad_dna(ps_model):
    model, tokenizer = ps_model
    with pytest.raises(InvalidSequenceError, match=r"'1'.*'X'"):
        probe_layers(model, tokenizer, ["ACGT", "ACXT"], [0, 1], progress=False)
    assert CONTROLS == ("kmer", "gc", "random_init", "shuffled")
