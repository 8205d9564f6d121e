"""The bfloat16 CPU path against float32 on every golden checkpoint: per-token cosine of every hidden state and
logits close. Loaded with dtype=torch.bfloat16 and converted with model.to(torch.bfloat16) alike."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dnallm_nb.modeling import CaduceusForMaskedLM, add_norm, RMSNorm
from dnallm_nb.testing import golden_path

FAMILIES = ["caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"]
MIN_COSINE = 0.999
MAX_LOGIT_DIFF = 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_close_to_float32(family):
    folder = golden_path(family)
    golden = load_file(folder / "golden.safetensors")
    fp32 = CaduceusForMaskedLM.from_pretrained(folder).eval()
    loaded = CaduceusForMaskedLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    converted = CaduceusForMaskedLM.from_pretrained(folder).eval().to(torch.bfloat16)
    for tag in ("short", "long"):
        ids = golden[f"{tag}.input_ids"]
        with torch.no_grad():
            want = fp32(ids, output_hidden_states=True)
            for model in (loaded, converted):
                got = model(ids, output_hidden_states=True)
                assert got.hidden_states[-1].dtype == torch.bfloat16
                for i, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
                    cosine = F.cosine_similarity(a.float(), b, dim=-1).min().item()
                    assert cosine >= MIN_COSINE, (family, tag, i, cosine)
                assert (got.logits.float() - want.logits).abs().max().item() <= MAX_LOGIT_DIFF


def test_fused_add_norm_matches_unfused():
    "Inference in bfloat16 takes the fused kernel; with a gradient the PyTorch ops: the same numbers up to rounding."
    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(0)
    h, r = torch.randn(2, 33, 64, generator=g).bfloat16(), torch.randn(2, 33, 64, generator=g)
    with torch.no_grad():
        fused = add_norm(h, r, norm, True, swap=True)
    unfused = add_norm(h, r, norm, True, swap=True)  # norm.weight requires a gradient: the PyTorch ops
    assert torch.equal(fused[1], unfused[1])
    assert (fused[0].float() - unfused[0].float()).abs().max() <= 2 ** -7 * unfused[0].float().abs().max()
