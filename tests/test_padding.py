"""Padding: every model class honours attention_mask exactly (each sequence's token outputs equal the sequence run
alone), on every family, scan backend and padding side; the mask is checked; pipelines batch correctly."""
import pytest
import torch
from transformers import AutoModelForMaskedLM, pipeline

from dnallm_nb.configuration import CaduceusConfig
from dnallm_nb.modeling import (PAD_STEP, POOLINGS, CaduceusForMaskedLM, CaduceusForSequenceClassification,
                                CaduceusModel, token_mask)
from dnallm_nb.scan import available_scan_backends
from dnallm_nb.testing import golden_path
from dnallm_nb.tokenization import CaduceusTokenizer, PlantTokenizer

FAMILIES = ["caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"]
LENGTHS = [4, 11, 17, 1]  # unequal, one of a single token
BACKENDS = available_scan_backends("cpu")  # "cpu" (C++ kernels) when it builds, and "reference"


def pad_batch(seqs, pad_id, side):
    "(ids, attention_mask) of `seqs` padded on `side` with `pad_id`."
    width = max(map(len, seqs))
    ids, mask = torch.full((len(seqs), width), pad_id), torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        at = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, at], mask[i, at] = s, 1
    return ids, mask


def random_sequences(model, seed=0):
    "Random base ids (A, C, G, T of the model's vocabulary) of LENGTHS."
    first = 7 if model.config.vocab_size == 16 else 3
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(first, first + 4, (n,), generator=g) for n in LENGTHS]


@pytest.fixture(scope="module", params=FAMILIES)
def mlm(request):
    model = AutoModelForMaskedLM.from_pretrained(golden_path(request.param)).eval()
    if model.config.pad_token_id < 0:  # PlantCaduceus configs say -100; the plant tokenizer pads with [PAD] = 0
        model.config.pad_token_id = 0
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sequence_alone(mlm, backend, side):
    mlm.scan_backend = backend
    seqs = random_sequences(mlm)
    ids, mask = pad_batch(seqs, mlm.config.pad_token_id, side)
    with torch.no_grad():
        batch = mlm(ids, attention_mask=mask, output_hidden_states=True, output_residual_states=True)
        inferred = mlm(ids)  # the same pads, found from pad_token_id
        for i, s in enumerate(seqs):
            alone = mlm(s[None], output_hidden_states=True, output_residual_states=True)
            real = mask[i].bool()
            torch.testing.assert_close(batch.logits[i, real], alone.logits[0], atol=1e-5, rtol=0)
            for a, b in zip(batch.hidden_states + batch.residual_states, alone.hidden_states + alone.residual_states):
                torch.testing.assert_close(a[i, real], b[0], atol=1e-5, rtol=0)
                assert not a[i, ~real].any()  # pad positions hold zeros
    assert torch.equal(inferred.logits, batch.logits)


def test_batch_composition_does_not_matter(mlm):
    seqs = random_sequences(mlm, seed=1)
    ids, mask = pad_batch(seqs, mlm.config.pad_token_id, "right")
    with torch.no_grad():
        full = mlm(ids, attention_mask=mask).logits
        pair = mlm(ids[[3, 1]], attention_mask=mask[[3, 1]]).logits
    torch.testing.assert_close(pair, full[[3, 1]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", [
    dict(bidirectional_strategy="ew_multiply"), dict(bidirectional=False), dict(bidirectional_weight_tie=False),
    dict(rcps=True, fused_add_norm=False), dict(ssm_cfg={"d_state": 4, "headdim": 8, "bias": True})])
def test_padding_is_exact_for_every_variant(variant):
    config = CaduceusConfig(**{**dict(d_model=16, n_layer=2, vocab_size=12, ssm_cfg={"d_state": 4},
                                      complement_map={i: c for i, c in enumerate([0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11])},
                                      pad_token_id=4), **variant})
    torch.manual_seed(0)
    model = CaduceusModel(config).eval()
    seqs = random_sequences(model)
    for side in ("left", "right"):
        ids, mask = pad_batch(seqs, 4, side)
        with torch.no_grad():
            batch = model(ids, attention_mask=mask).last_hidden_state
            for i, s in enumerate(seqs):
                torch.testing.assert_close(batch[i, mask[i].bool()], model(s[None]).last_hidden_state[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["caduceus-ph-tiny", "caduceus-ps-tiny"])  # conjoined Ph, PS
def test_classifier_pools_tokens_only(name):
    torch.manual_seed(0)
    clf = CaduceusForSequenceClassification.from_pretrained(golden_path(name), num_labels=3).eval()
    seqs = random_sequences(clf)
    for pooling in POOLINGS:
        clf.config.pooling = pooling
        for side in ("left", "right"):
            ids, mask = pad_batch(seqs, 4, side)
            with torch.no_grad():
                batch = clf(ids, attention_mask=mask).logits
                alone = torch.cat([clf(s[None]).logits for s in seqs])
            torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0, msg=lambda m: f"{pooling}, {side}: {m}")


def test_masked_lm_loss_ignores_padding(mlm):
    seqs = random_sequences(mlm)[:2]
    ids, mask = pad_batch(seqs, mlm.config.pad_token_id, "right")
    labels = ids.clone()
    labels[mask == 0] = 5  # labels under the padding must not count
    with torch.no_grad():
        loss = mlm(ids, attention_mask=mask, labels=labels).loss
        logits = mlm(ids, attention_mask=mask).logits
    expected = torch.nn.functional.cross_entropy(logits[mask.bool()], ids[mask.bool()])
    torch.testing.assert_close(loss, expected)


# ---------------------------------------------------------------- the mask is checked

@pytest.fixture(scope="module")
def ps():
    return CaduceusForMaskedLM.from_pretrained(golden_path("caduceus-ps-tiny")).eval()


@pytest.mark.parametrize("mask, fragments", [
    (torch.ones(2, 5, dtype=torch.long), ["shape (batch, length) = (2, 6)", "(2, 5)"]),
    (torch.ones(2, 6), ["bool or integer", "torch.float32", ".long()"]),
    (torch.full((2, 6), 2), ["only 0 (padding) and 1 (token)", "[2]"]),
    (torch.tensor([[1, 1, 0, 1, 1, 1], [1] * 6]), ["row 0", "2 separate runs", "hole"]),
    (torch.tensor([[0] * 6, [1] * 6]), ["row 0", "no token"]),
])
def test_bad_masks_are_errors_naming_the_fix(ps, mask, fragments):
    ids = torch.tensor([[7, 8, 9, 10, 7, 8]] * 2)
    with pytest.raises(ValueError) as e:
        ps(ids, attention_mask=mask)
    assert all(f in str(e.value) for f in fragments), str(e.value)


def test_pad_ids_without_a_mask_are_inferred_or_refused(ps):
    with pytest.raises(ValueError, match="hole"):
        ps(torch.tensor([[7, 8, 4, 9, 10]]))  # a pad between bases is not padding
    with torch.no_grad():  # an explicit mask that marks it as a token reads it as a token
        ps(torch.tensor([[7, 8, 4, 9, 10]]), attention_mask=torch.ones(1, 5, dtype=torch.long))


def test_padding_with_another_id_than_the_config_is_an_error(ps):
    ids, mask = pad_batch([torch.tensor([7, 8, 9]), torch.tensor([7])], 0, "right")  # pads with 0, config says 4
    with pytest.raises(ValueError, match=r"token ids \[0\].*config.pad_token_id\) is 4.*tokenizer.pad_token_id"):
        ps(ids, attention_mask=mask)


def test_empty_input_is_an_error(ps):
    with pytest.raises(ValueError, match="empty"):
        ps(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        token_mask(None, None, (2, 0))


def test_all_ones_mask_and_no_mask_run_the_same_code(ps):
    ids = torch.tensor([[7, 8, 9, 10, 7, 8]] * 2)
    assert token_mask(torch.ones_like(ids), ids, (2, 6), 4) is None
    with torch.no_grad():
        assert torch.equal(ps(ids).logits, ps(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool)).logits)


def test_cpu_kernel_passes_pad_steps_bit_for_bit():
    "The C++ Mamba-1 scan: a step of exactly 0, and the PAD_STEP the mixers use, leave the state as it is."
    fastscan = pytest.importorskip("dnallm_nb.fastscan")
    if "cpu" not in BACKENDS:
        pytest.skip("the C++ kernels did not build here")
    torch.manual_seed(0)
    b, d, n, L = 2, 8, 4, 70
    u, z, delta, bias = torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(d)
    A, B, C, D = -16 * torch.rand(d, n), torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(d)
    keep = torch.ones(L, dtype=torch.bool)
    keep[[0, 1, 30, 31, 32, 69]] = False
    alone = fastscan.selective_scan_cpu(u[..., keep], delta[..., keep], A, B[..., keep], C[..., keep], D, z[..., keep],
                                        delta_bias=bias, delta_softplus=True)
    padded = fastscan.selective_scan_cpu(u, delta.masked_fill(~keep, PAD_STEP), A, B, C, D, z, delta_bias=bias,
                                         delta_softplus=True)
    assert torch.equal(padded[..., keep], alone)
    steps = torch.nn.functional.softplus(delta + bias[:, None])
    zero = fastscan.selective_scan_cpu(u, steps * keep, A, B, C, D, z)  # exp(0) is exactly 1 in the kernel
    assert torch.equal(zero[..., keep], fastscan.selective_scan_cpu(u[..., keep], steps[..., keep], A, B[..., keep],
                                                                     C[..., keep], D, z[..., keep]))


# ---------------------------------------------------------------- pipelines

@pytest.mark.parametrize("side", ["left", "right"])
def test_fill_mask_pipeline_batches_like_one_by_one(side):
    model = CaduceusForMaskedLM.from_pretrained(golden_path("caduceus-ps-tiny")).eval()
    fill = pipeline("fill-mask", model=model, tokenizer=CaduceusTokenizer(padding_side=side))
    texts = ["ACGT[MASK]ACGT", "A[MASK]", "GATTACAGATTACA[MASK]CC", "[MASK]TTTT"]
    one = fill(texts, batch_size=1, targets=list("ACGT"))
    many = fill(texts, batch_size=4, targets=list("ACGT"))
    for a, b in zip(one, many):
        assert [r["token_str"] for r in a] == [r["token_str"] for r in b]
        assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_feature_extraction_pipeline_returns_tokens_then_zero_padding(side):
    model = CaduceusModel.from_pretrained(golden_path("plantcaduceus-tiny")).eval()
    model.config.pad_token_id = 0
    extract = pipeline("feature-extraction", model=model, tokenizer=PlantTokenizer(padding_side=side))
    texts = ["ACGTACGTAA", "AC", "GATTACA"]
    one = extract(texts, batch_size=1, return_tensors=True)
    many = extract(texts, batch_size=3, return_tensors=True)
    for text, a, b in zip(texts, one, many):
        n = len(text)
        assert a.shape == (1, n, 2 * model.config.d_model) and b.shape[1] == 10  # padded to the batch's longest
        tokens = b[:, -n:] if side == "left" else b[:, :n]
        pads = b[:, :-n] if side == "left" else b[:, n:]
        torch.testing.assert_close(tokens, a, atol=1e-5, rtol=0)
        assert not pads.any()


def test_forward_throughput_reports_both_paths(ps, capsys):
    from dnallm_nb.modeling import forward_throughput
    rows = forward_throughput(ps, CaduceusTokenizer(), batch_sizes=(1, 2), lengths=(10,), repeats=1)
    assert [(r["batch"], r["length"]) for r in rows] == [(1, 10), (2, 10)]
    assert all(r["unpadded seq/s"] > 0 and r["padded seq/s"] > 0 for r in rows)
    assert "batch   2 ×    10 bp" in capsys.readouterr().out
