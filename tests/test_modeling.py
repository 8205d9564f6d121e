"""Strict loading, save/load round trips, parameter counts, classification, RC behaviour and peft on the native models."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from dnallm_nb.configuration import CaduceusConfig
from dnallm_nb.modeling import (POOLINGS, CaduceusForMaskedLM, CaduceusForSequenceClassification, CaduceusModel,
                                CheckpointError, checkpoint_keys, detect_mixer_type, flip_strands)
from dnallm_nb.rc import reverse_complement_ids
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
CADUCEUS_COMPLEMENT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 9, 9: 8, 10: 7, 11: 11}
PLANT_COMPLEMENT = {0: 0, 1: 1, 2: 2, 3: 6, 4: 5, 5: 4, 6: 3, 7: 7}


def copy_checkpoint(name: str, dst: Path) -> Path:
    "A writable copy of a golden folder (without golden.safetensors)."
    shutil.copytree(GOLDEN / name, dst, ignore=shutil.ignore_patterns("golden.safetensors"))
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.fixture(scope="module")
def short_ids():
    return {name: load_file(GOLDEN / name / "golden.safetensors")["short.input_ids"]
            for name in ("caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny")}


# ---------------------------------------------------------------- strict loading

def test_missing_non_tied_key_is_an_error(tmp_path):
    folder = copy_checkpoint("caduceus-ps-tiny", tmp_path / "ckpt")
    weights = load_file(folder / "model.safetensors")
    del weights["caduceus.backbone.layers.1.mixer.submodule.mamba_rev.A_log"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for cls in (CaduceusForMaskedLM, CaduceusModel):
        with pytest.raises(CheckpointError, match=r"missing weights.*layers\.1\.mixer\.submodule\.mamba_rev\.A_log"):
            cls.from_pretrained(folder)


def test_missing_key_in_bin_checkpoint_is_an_error(tmp_path):
    folder = copy_checkpoint("caduceus-ph-tiny", tmp_path / "ckpt")
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del weights["caduceus.backbone.norm_f.weight"]
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing weights.*norm_f\.weight"):
        AutoModelForMaskedLM.from_pretrained(folder)


def test_unexpected_key_is_an_error(tmp_path):
    folder = copy_checkpoint("caduceus-ps-tiny", tmp_path / "ckpt")
    weights = load_file(folder / "model.safetensors")
    weights["caduceus.backbone.layers.0.mixer.submodule.mamba_fwd.extra.weight"] = torch.zeros(3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for cls in (CaduceusForMaskedLM, CaduceusModel):
        with pytest.raises(CheckpointError, match=r"unexpected weights.*mamba_fwd\.extra\.weight"):
            cls.from_pretrained(folder)


def test_shapes_that_disagree_with_the_config_are_an_error_naming_them(tmp_path):
    folder = copy_checkpoint("caduceus-ps-tiny", tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["ssm_cfg"]["d_state"] = 8  # the weights have 16
    (folder / "config.json").write_text(json.dumps(config))
    expected = (r"shapes disagree with CaduceusForMaskedLM built from its config: "
                r"caduceus\.backbone\.layers\.0\.mixer\.submodule\.mamba_fwd\.A_log: checkpoint \(64, 16\) vs model "
                r"\(64, 8\).*Likely cause: config\.json's ssm_cfg d_state")
    with pytest.raises(CheckpointError, match=expected):
        CaduceusForMaskedLM.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="ignore_mismatched_sizes=True is refused for them"):
        CaduceusForMaskedLM.from_pretrained(folder, ignore_mismatched_sizes=True)


def test_only_a_task_head_may_start_anew_with_ignore_mismatched_sizes(tmp_path):
    CaduceusForSequenceClassification.from_pretrained(GOLDEN / "caduceus-ps-tiny", num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"score\.weight: checkpoint \(3, 32\) vs model \(2, 32\).*num_labels.*"
                                              r"pass ignore_mismatched_sizes=True"):
        CaduceusForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    clf = CaduceusForSequenceClassification.from_pretrained(tmp_path, num_labels=2, ignore_mismatched_sizes=True)
    assert clf.score.weight.shape == (2, 32)


def test_untied_config_does_not_invent_tied_copies(tmp_path):
    "PS safetensors omit mamba_rev in/out_proj; that is only fine when the config says they are tied."
    folder = copy_checkpoint("caduceus-ps-tiny", tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "bidirectional_weight_tie": False}))
    with pytest.raises(CheckpointError, match=r"missing weights.*mamba_rev\.in_proj\.weight"):
        CaduceusForMaskedLM.from_pretrained(folder)


def test_complement_buffer_must_agree_with_config(tmp_path):
    folder = copy_checkpoint("caduceus-ps-tiny", tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "complement_map": {str(i): i for i in range(16)}}))
    with pytest.raises(CheckpointError, match="complement_map.*disagrees with config"):
        CaduceusForMaskedLM.from_pretrained(folder)


@pytest.mark.parametrize("name, file", [("caduceus-ps-tiny", "model.safetensors"), ("plantcaduceus-tiny", "pytorch_model.bin")])
def test_truncated_weight_file_names_the_file(tmp_path, name, file):
    folder = copy_checkpoint(name, tmp_path / "ckpt")
    data = (folder / file).read_bytes()
    (folder / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{file}.*corrupt or truncated.*download it again"):
        CaduceusForMaskedLM.from_pretrained(folder)


def test_garbage_weight_file_is_reported(tmp_path):
    folder = copy_checkpoint("caduceus-ph-tiny", tmp_path / "ckpt")
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        AutoModel.from_pretrained(folder)


def test_tied_copies_are_shared_after_loading():
    ps = CaduceusForMaskedLM.from_pretrained(GOLDEN / "caduceus-ps-tiny")  # safetensors without the copies
    ph = CaduceusForMaskedLM.from_pretrained(GOLDEN / "caduceus-ph-tiny")  # .bin with every copy present
    for model in (ps, ph):
        for layer in model.caduceus.backbone.layers:
            bimamba = layer.mixer.submodule if model.config.rcps else layer.mixer
            for name in ("in_proj", "out_proj"):  # own modules (as upstream), one shared Parameter
                fwd, rev = getattr(bimamba.mamba_fwd, name), getattr(bimamba.mamba_rev, name)
                assert rev is not fwd and rev.weight is fwd.weight
            assert bimamba.mamba_rev.conv1d.weight is not bimamba.mamba_fwd.conv1d.weight
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ref = torch.load(GOLDEN / "caduceus-ph-tiny" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(ph.lm_head.weight, ref["lm_head.weight"])


def test_bin_checkpoint_without_prefix_loads_into_both_classes(tmp_path, short_ids):
    "A base-model checkpoint (no `caduceus.` prefix, no LM head) in pytorch_model.bin format."
    folder = copy_checkpoint("plantcaduceus-tiny", tmp_path / "ckpt")
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    base = {k.removeprefix("caduceus."): v for k, v in weights.items() if k.startswith("caduceus.")}
    torch.save(base, folder / "pytorch_model.bin")
    golden = load_file(GOLDEN / "plantcaduceus-tiny" / "golden.safetensors")
    mlm = CaduceusForMaskedLM.from_pretrained(folder)
    assert (logits(mlm, short_ids["plantcaduceus-tiny"]) - golden["short.logits"]).abs().max() <= 1e-4
    with torch.no_grad():
        h = CaduceusModel.from_pretrained(folder).eval()(short_ids["plantcaduceus-tiny"]).last_hidden_state
    assert (h - golden["short.last_hidden_state"]).abs().max() <= 1e-4


def test_mixer_type_detection_and_override(tmp_path):
    assert detect_mixer_type(checkpoint_keys(GOLDEN / "plantcad2-tiny")) == "mamba2"
    assert detect_mixer_type(checkpoint_keys(GOLDEN / "caduceus-ph-tiny")) == "mamba1"
    assert CaduceusModel.from_pretrained(GOLDEN / "plantcad2-tiny").config.mixer_type == "mamba2"
    assert CaduceusModel.from_pretrained(GOLDEN / "plantcad2-tiny", mixer_type="mamba2").config.mixer_type == "mamba2"
    with pytest.raises(CheckpointError, match="mixer_type is 'mamba1'.*mamba2"):
        CaduceusModel.from_pretrained(GOLDEN / "plantcad2-tiny", mixer_type="mamba1")


def test_auto_map_never_triggers_remote_code():
    "The golden configs carry the upstream auto_map; even trust_remote_code=True resolves to the registered class."
    assert "auto_map" in json.loads((GOLDEN / "caduceus-ps-tiny" / "config.json").read_text())
    model = AutoModelForMaskedLM.from_pretrained(GOLDEN / "caduceus-ps-tiny", trust_remote_code=True)
    assert type(model) is CaduceusForMaskedLM and not hasattr(model.config, "auto_map")


# ---------------------------------------------------------------- save / load

@pytest.mark.parametrize("name", ["caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"])
def test_save_load_round_trip(tmp_path, name, short_ids):
    model = CaduceusForMaskedLM.from_pretrained(GOLDEN / name)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "auto_map" not in saved and saved["mixer_type"] == model.config.mixer_type
    assert not any("mamba_rev.in_proj" in k for k in load_file(tmp_path / "saved" / "model.safetensors"))
    again = CaduceusForMaskedLM.from_pretrained(tmp_path / "saved")
    assert torch.equal(logits(model, short_ids[name]), logits(again, short_ids[name]))
    with torch.no_grad():
        base = AutoModel.from_pretrained(tmp_path / "saved").eval()(short_ids[name]).last_hidden_state
        assert torch.equal(base, model.caduceus(short_ids[name]).last_hidden_state)


def test_classifier_round_trip_keeps_pooling_and_head(tmp_path, short_ids):
    clf = CaduceusForSequenceClassification.from_pretrained(GOLDEN / "caduceus-ps-tiny", num_labels=3, pooling="max")
    clf.save_pretrained(tmp_path / "clf")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf")
    assert type(again) is CaduceusForSequenceClassification and again.config.pooling == "max"
    assert torch.equal(logits(clf, short_ids["caduceus-ps-tiny"]), logits(again, short_ids["caduceus-ps-tiny"]))


# ---------------------------------------------------------------- parameter counts (SPEC §1)

MAMBA1 = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto"}
MAMBA2 = {"d_state": 64, "d_conv": 4, "expand": 2}
RELEASED = {
    "caduceus-ph 1k d118 l4": (dict(d_model=118, n_layer=4, vocab_size=12, complement_map=CADUCEUS_COMPLEMENT, ssm_cfg=MAMBA1), 470_702),
    "caduceus-ps 1k d256 l4": (dict(d_model=256, n_layer=4, vocab_size=12, rcps=True, complement_map=CADUCEUS_COMPLEMENT, ssm_cfg=MAMBA1), 1_934_592),
    "caduceus 131k d256 l16": (dict(d_model=256, n_layer=16, vocab_size=12, rcps=True, complement_map=CADUCEUS_COMPLEMENT, ssm_cfg=MAMBA1), 7_725_312),
    "PlantCaduceus_l20": (dict(d_model=384, n_layer=20, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA1), 20_870_016),
    "PlantCaduceus_l24": (dict(d_model=512, n_layer=24, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA1), 43_614_720),
    "PlantCaduceus_l28": (dict(d_model=768, n_layer=28, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA1), 112_107_264),
    "PlantCaduceus_l32": (dict(d_model=1024, n_layer=32, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA1), 225_354_752),
    "PlantCAD2-Small": (dict(d_model=768, n_layer=24, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA2, mixer_type="mamba2"), 88_238_208),
    "PlantCAD2-Medium": (dict(d_model=1024, n_layer=48, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA2, mixer_type="mamba2"), 311_162_880),
    "PlantCAD2-Large": (dict(d_model=1536, n_layer=48, vocab_size=8, rcps=True, complement_map=PLANT_COMPLEMENT, ssm_cfg=MAMBA2, mixer_type="mamba2"), 694_385_664),
}


@pytest.mark.parametrize("name", RELEASED)
def test_released_parameter_counts(name):
    kwargs, expected = RELEASED[name]
    with torch.device("meta"):  # shapes only, no memory
        model = CaduceusForMaskedLM(CaduceusConfig(**kwargs))
    assert sum(p.numel() for p in model.parameters()) == expected  # parameters() counts shared tensors once


# ---------------------------------------------------------------- sequence classification and RC behaviour

TINY = dict(d_model=16, n_layer=2, vocab_size=12, complement_map=CADUCEUS_COMPLEMENT, ssm_cfg={"d_state": 4}, num_labels=3)


def tiny_classifier(rcps: bool, **kwargs) -> CaduceusForSequenceClassification:
    torch.manual_seed(0)
    return CaduceusForSequenceClassification(CaduceusConfig(**TINY, rcps=rcps), **kwargs).eval()


@pytest.fixture(scope="module")
def dna_ids():
    return torch.randint(7, 11, (2, 25), generator=torch.Generator().manual_seed(0))  # odd length: a true centre


@pytest.mark.parametrize("rcps", [True, False])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_shapes_and_rc_invariance(rcps, pooling, dna_ids):
    clf = tiny_classifier(rcps, pooling=pooling)
    rc_ids = reverse_complement_ids(dna_ids, torch.tensor(clf.config.complement_ids))
    a, b = logits(clf, dna_ids), logits(clf, rc_ids)
    assert a.shape == (2, 3)
    if pooling in ("first", "last"):  # per-position features of rc(x) are those of x, position-reversed
        other = tiny_classifier(rcps, pooling="last" if pooling == "first" else "first")
        assert torch.allclose(a, logits(other, rc_ids), atol=1e-5)
    else:
        assert torch.allclose(a, b, atol=1e-5)


def test_ph_without_conjoining_is_not_rc_invariant(dna_ids):
    clf = tiny_classifier(False, conjoin=False)
    rc_ids = reverse_complement_ids(dna_ids, torch.tensor(clf.config.complement_ids))
    assert not torch.allclose(logits(clf, dna_ids), logits(clf, rc_ids), atol=1e-3)


def test_ps_invariant_view_uses_both_strands(dna_ids):
    "Pooled logits equal score((fwd + flipC(rc)) / 2) computed by hand from the base model's output."
    clf = tiny_classifier(True, pooling="mean")
    with torch.no_grad():
        h = clf.caduceus(dna_ids).last_hidden_state  # (B, L, 2d)
        by_hand = clf.score(((h[..., :16] + h[..., 16:].flip(-1)) / 2).mean(1))
    assert torch.allclose(logits(clf, dna_ids), by_hand, atol=1e-6)


def test_classification_losses(dna_ids):
    clf = tiny_classifier(True)
    assert clf(dna_ids, labels=torch.tensor([0, 2])).loss.ndim == 0
    assert clf.config.problem_type == "single_label_classification"
    multi = tiny_classifier(True)
    loss = multi(dna_ids, labels=torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).loss
    assert multi.config.problem_type == "multi_label_classification" and loss.ndim == 0
    torch.manual_seed(0)
    reg = CaduceusForSequenceClassification(CaduceusConfig(**{**TINY, "num_labels": 1}, rcps=True))
    assert reg(dna_ids, labels=torch.tensor([0.5, -1.0])).loss.ndim == 0 and reg.config.problem_type == "regression"


def test_classifier_from_mlm_checkpoint_gets_a_new_head():
    clf = AutoModelForSequenceClassification.from_pretrained(GOLDEN / "plantcaduceus-tiny", num_labels=2, pooling="center")
    assert type(clf) is CaduceusForSequenceClassification and clf.score.weight.shape == (2, 48)


def test_bad_classifier_arguments():
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_classifier(True, pooling="attention")
    with pytest.raises(ValueError, match="conjoin=False"):
        CaduceusForSequenceClassification(CaduceusConfig(d_model=16, n_layer=1, vocab_size=8, ssm_cfg={"d_state": 4}))


def test_mlm_rc_equivariance_of_golden_ps(short_ids):
    "RCPS logits of rc(x) are the complemented, reversed logits of x (exact up to float error)."
    model = CaduceusForMaskedLM.from_pretrained(GOLDEN / "plantcad2-tiny")
    comp = torch.tensor(model.config.complement_ids)
    ids = short_ids["plantcad2-tiny"]
    assert torch.allclose(logits(model, reverse_complement_ids(ids, comp)), logits(model, ids).flip(1)[..., comp], atol=1e-5)


# ---------------------------------------------------------------- forward arguments, dtypes, states

def test_refused_and_equivalent_inputs(short_ids):
    model = CaduceusForMaskedLM.from_pretrained(GOLDEN / "caduceus-ps-tiny").eval()
    ids = short_ids["caduceus-ps-tiny"]
    with pytest.raises(ValueError, match="no attention layers"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="exactly one of"):
        model()
    with torch.no_grad():
        ref = model(ids).logits
        assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)).logits, ref)
        embeds = model.caduceus.backbone.embeddings(ids)
        assert torch.equal(model(inputs_embeds=embeds).logits, ref)
        assert torch.equal(model(ids, return_dict=False)[0], ref)
        loss = model(ids, labels=ids.masked_fill(ids == 8, -100)).loss
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_residual_states_are_the_residual_stream(short_ids):
    model = CaduceusModel.from_pretrained(GOLDEN / "caduceus-ph-tiny").eval()
    with torch.no_grad():
        out = model(short_ids["caduceus-ph-tiny"], output_hidden_states=True, output_residual_states=True)
        final = model.backbone.norm_f(out.residual_states[-1])
    assert len(out.residual_states) == model.config.n_layer and len(out.hidden_states) == model.config.n_layer + 1
    # stream after layer 0 = embedding + mixer output of layer 0; the final norm reads the last stream
    assert torch.allclose(out.residual_states[0], out.hidden_states[0] + out.hidden_states[1], atol=1e-6)
    assert torch.allclose(final, out.last_hidden_state, atol=1e-6)


def test_ps_states_are_rc_equivariant(short_ids):
    model = CaduceusModel.from_pretrained(GOLDEN / "caduceus-ps-tiny").eval()
    ids = short_ids["caduceus-ps-tiny"]
    rc_ids = reverse_complement_ids(ids, torch.tensor(model.config.complement_ids))
    with torch.no_grad():
        a = model(ids, output_hidden_states=True, output_residual_states=True)
        b = model(rc_ids, output_hidden_states=True, output_residual_states=True)
    for x, y in zip(a.hidden_states + a.residual_states, b.hidden_states + b.residual_states):
        assert torch.allclose(flip_strands(x), y, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32(dtype, short_ids):
    golden = load_file(GOLDEN / "plantcad2-tiny" / "golden.safetensors")
    model = CaduceusForMaskedLM.from_pretrained(GOLDEN / "plantcad2-tiny", dtype=dtype)
    assert model.dtype == dtype
    out = logits(model, short_ids["plantcad2-tiny"])
    assert out.dtype == torch.float32  # logits are returned in float32, as upstream
    assert (out - golden["short.logits"]).abs().max() < 0.05 * golden["short.logits"].abs().max()


def test_scan_backend_switch():
    model = CaduceusModel.from_pretrained(GOLDEN / "caduceus-ph-tiny")
    assert model.scan_backend in ("cpu", "reference")
    model.scan_backend = "reference"
    assert model.config.scan_backend == "reference" and model.scan_backend == "reference"
    with pytest.raises(ValueError, match="unknown scan backend"):
        model.scan_backend = "no-such-backend"


# ---------------------------------------------------------------- peft

def test_lora_wraps_each_direction_and_keeps_the_weight_tie(short_ids):
    peft = pytest.importorskip("peft")
    model = CaduceusForMaskedLM.from_pretrained(GOLDEN / "caduceus-ps-tiny")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["x_proj", "out_proj"]))
    bimamba = lora.base_model.model.caduceus.backbone.layers[0].mixer.submodule
    # as on the upstream model: one adapter per direction, both over the one shared (frozen) weight
    for name in ("out_proj", "x_proj"):
        fwd, rev = getattr(bimamba.mamba_fwd, name), getattr(bimamba.mamba_rev, name)
        assert isinstance(fwd, peft.tuners.lora.LoraLayer) and isinstance(rev, peft.tuners.lora.LoraLayer)
    assert bimamba.mamba_rev.out_proj.base_layer.weight is bimamba.mamba_fwd.out_proj.base_layer.weight
    assert not bimamba.shares_projections()  # adapters: each direction through its own projections
    frozen = bimamba.mamba_fwd.out_proj.base_layer.weight.clone()
    ids = short_ids["caduceus-ps-tiny"]
    trainable = [p for p in lora.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    loss = lora(input_ids=ids, labels=ids).loss
    loss.backward()
    lora_b = [p for n, p in lora.named_parameters() if "lora_B" in n]  # lora_A's first gradient is 0 (B starts at 0)
    assert len(lora_b) == 8 and all(p.grad.abs().sum() > 0 for p in lora_b)
    optimizer.step()
    assert torch.equal(frozen, bimamba.mamba_fwd.out_proj.base_layer.weight)
    lora.eval()
    with torch.no_grad():
        adapted = lora(input_ids=ids).logits
    assert not torch.allclose(adapted, logits(CaduceusForMaskedLM.from_pretrained(GOLDEN / "caduceus-ps-tiny"), ids))


def test_loading_shows_no_per_tensor_bar_and_keeps_other_hooks(capsys):
    from transformers.utils import logging as hf_logging
    seen = []
    previous = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: seen.append(kwargs.get("desc")) or factory(*args, **kwargs))
    try:
        CaduceusForMaskedLM.from_pretrained(GOLDEN / "caduceus-ph-tiny")
    finally:
        hf_logging.set_tqdm_hook(previous)
    assert "Loading weights" not in capsys.readouterr().err
    assert seen == ["Loading weights"]  # the caller's hook still sees the bar (and is restored afterwards)
