"""LoRA adapters: released (upstream-made) adapters load and reproduce upstream's outputs; adapters made here have
upstream's key names; every offered LoRA target is real; merging per-direction adapters is exact."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dnallm_nb.finetune import check_lora_targets, lora_target_modules
from dnallm_nb.modeling import CaduceusForMaskedLM, prepare_lora_merge
from dnallm_nb.rc import reverse_complement_ids
from dnallm_nb.testing import golden_path

peft = pytest.importorskip("peft")
ADAPTERS = ["caduceus-ps-tiny-lora", "plantcaduceus-tiny-lora", "plantcad2-tiny-lora"]


def base_of(adapter: str) -> CaduceusForMaskedLM:
    return CaduceusForMaskedLM.from_pretrained(golden_path(adapter.removesuffix("-lora"))).eval()


def logits_and_rc(model, ids, complement_ids):
    with torch.no_grad():
        return model(input_ids=ids).logits, model(input_ids=reverse_complement_ids(ids, torch.tensor(complement_ids))).logits


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_released_adapter_reproduces_upstream(adapter):
    base = base_of(adapter)
    golden = load_file(golden_path(adapter) / "golden.safetensors")
    model = peft.PeftModel.from_pretrained(base, golden_path(adapter)).eval()
    logits, rc_logits = logits_and_rc(model, golden["short.input_ids"], base.config.complement_ids)
    assert (logits - golden["short.logits"]).abs().max() <= 1e-4
    assert (rc_logits - golden["short.rc_logits"]).abs().max() <= 1e-4
    plain, _ = logits_and_rc(base_of(adapter), golden["short.input_ids"], base.config.complement_ids)
    assert (plain - golden["short.logits"]).abs().max() > 0.1  # the adapter matters: both directions' deltas apply


def test_adapter_naming_dt_proj_loads_and_matches_upstream(tmp_path):
    "Upstream reads dt_proj.weight directly, so a LoRA on dt_proj has no effect there, nor here."
    folder = tmp_path / "adapter"
    shutil.copytree(golden_path("plantcaduceus-tiny-lora"), folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = [*config["target_modules"], "dt_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(folder / "adapter_model.safetensors")
    base = base_of("plantcaduceus-tiny-lora")
    g = torch.Generator().manual_seed(0)
    for name, module in base.named_modules():
        if name.endswith(".dt_proj"):
            key = f"base_model.model.{name}"
            weights[f"{key}.lora_A.weight"] = torch.randn(config["r"], module.in_features, generator=g)
            weights[f"{key}.lora_B.weight"] = torch.randn(module.out_features, config["r"], generator=g)
    save_file(weights, folder / "adapter_model.safetensors")
    model = peft.PeftModel.from_pretrained(base, folder).eval()
    assert sum(isinstance(m, peft.tuners.lora.LoraLayer) for n, m in model.named_modules() if n.endswith("dt_proj")) == 4
    golden = load_file(folder / "golden.safetensors")
    logits, rc_logits = logits_and_rc(model, golden["short.input_ids"], base.config.complement_ids)
    assert (logits - golden["short.logits"]).abs().max() <= 1e-4
    assert (rc_logits - golden["short.rc_logits"]).abs().max() <= 1e-4


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_made_here_have_upstream_key_names(adapter, tmp_path):
    released = load_file(golden_path(adapter) / "adapter_model.safetensors")
    config = json.loads((golden_path(adapter) / "adapter_config.json").read_text())
    ours = peft.get_peft_model(base_of(adapter), peft.LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                                                                 target_modules=config["target_modules"]))
    ours.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in released.items()}


@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "plantcad2-tiny"])  # Mamba-1, Mamba-2
def test_every_offered_lora_target_is_real(name):
    ids = load_file(golden_path(name) / "golden.safetensors")["short.input_ids"]
    for target in lora_target_modules(CaduceusForMaskedLM.from_pretrained(golden_path(name))):
        torch.manual_seed(0)
        base = CaduceusForMaskedLM.from_pretrained(golden_path(name)).eval()
        with torch.no_grad():
            before = base(ids).logits
        model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=[target]))
        lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
        assert lora_b and all(f".{target}.lora_B" in n for n in lora_b)
        with torch.no_grad():
            for p in lora_b.values():
                p.normal_(std=0.1)
        out = model(input_ids=ids).logits
        assert (out - before).abs().max() > 1e-3, f"a nonzero LoRA on {target} must move the logits"
        out.square().mean().backward()
        missing = [n for n, p in lora_b.items() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("target", ["dt_proj", "in_proj"])
def test_mamba1_projections_read_as_weights_are_refused_with_the_reason(target):
    model = CaduceusForMaskedLM.from_pretrained(golden_path("caduceus-ps-tiny"))
    with pytest.raises(ValueError, match=f"'{target}' is not offered for mamba1 mixers: the mixer reads {target}.weight "
                                         "directly, as upstream's"):
        check_lora_targets(model, ["out_proj", target])
    assert check_lora_targets(CaduceusForMaskedLM.from_pretrained(golden_path("plantcad2-tiny")), ["in_proj"]) == ["in_proj"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_merging_per_direction_adapters_unties_and_is_exact(adapter, tmp_path):
    golden = load_file(golden_path(adapter) / "golden.safetensors")
    model = peft.PeftModel.from_pretrained(base_of(adapter), golden_path(adapter)).eval()
    merged = prepare_lora_merge(model).merge_and_unload()
    assert merged.config.bidirectional_weight_tie is False
    merged.save_pretrained(tmp_path)
    reloaded = CaduceusForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        for m in (merged, reloaded):
            assert (m(golden["short.input_ids"]).logits - golden["short.logits"]).abs().max() <= 1e-4


def test_finetune_adapters_use_upstream_key_names(tmp_path):
    from dnallm_nb.finetune import sequence_classifier, trainable_model
    classifier, _ = sequence_classifier(golden_path("caduceus-ps-tiny"), 2, "single_label_classification")
    trainable_model(classifier, "lora", lora_targets=["out_proj"], lora_r=4).save_pretrained(tmp_path)
    saved = {k for k in load_file(tmp_path / "adapter_model.safetensors") if "lora_" in k}
    released = {k for k in load_file(golden_path("caduceus-ps-tiny-lora") / "adapter_model.safetensors") if ".out_proj." in k}
    assert saved == released  # both directions, upstream's module paths
