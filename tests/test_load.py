"""load_model_and_tokenizer: hub ids served from a local Hugging Face cache, golden outputs, pipelines and errors.

The tiny golden checkpoints (tests/fixtures/golden) stand in for the released weights: each registry id below is
filed into a private hub cache laid out as huggingface_hub leaves it (blobs, snapshots/<commit>, refs/main),
and loaded with the hub offline."""
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import pipeline

import dnallm_nb.load
from dnallm_nb.dna import InvalidSequenceError
from dnallm_nb.load import (MODEL_REGISTRY, CheckpointNotFoundError, ModelInfo, cache_checkpoint, list_models,
                            load_model_and_tokenizer, register_model, resolve_checkpoint)
from dnallm_nb.modeling import CaduceusForMaskedLM, CaduceusForSequenceClassification, CaduceusModel
from dnallm_nb.tokenization import CaduceusTokenizer, PlantTokenizer
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
STAND_INS = {  # registry id -> golden folder with the same layout
    "kuleshov-group/caduceus-ph_seqlen-131k_d_model-256_n_layer-16": "caduceus-ph-tiny",
    "kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16": "caduceus-ps-tiny",
    "kuleshov-group/PlantCaduceus_l32": "plantcaduceus-tiny",
    "kuleshov-group/PlantCAD2-Small-l24-d0768": "plantcad2-tiny",
}
TOKENIZER = {"caduceus-ph-tiny": CaduceusTokenizer, "caduceus-ps-tiny": CaduceusTokenizer,
             "plantcaduceus-tiny": PlantTokenizer, "plantcad2-tiny": PlantTokenizer}
# last_hidden_state of "ACGTACGT": Caduceus adds [SEP]; PS models return both strands (2 * d_model)
SEED_SHAPES = {"caduceus-ph-tiny": (1, 9, 32), "caduceus-ps-tiny": (1, 9, 64),
               "plantcaduceus-tiny": (1, 8, 96), "plantcad2-tiny": (1, 8, 128)}


def file_into_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    "Lay `folder` out as huggingface_hub's cache does: blobs by hash, snapshot symlinks, refs/main -> commit."
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        if file.name == "golden.safetensors":
            continue
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf_hub_cache")
    for repo_id, folder in STAND_INS.items():
        file_into_hub_cache(cache, repo_id, GOLDEN / folder)
    return cache


def offline_load(repo_id, cache, **kwargs):
    return load_model_and_tokenizer(repo_id, cache_dir=cache, local_files_only=True, **kwargs)


def test_seed_snippets_verbatim_offline(hub_cache, tmp_path):
    """The README snippet for each id, run as a user would: a fresh interpreter with HF_HUB_OFFLINE=1 and
    HF_HUB_CACHE set (no loader arguments). The same interpreter then asks for an id that is not cached."""
    blocks = [textwrap.dedent(f"""
        from dnallm_nb.load import load_model_and_tokenizer
        model, tokenizer = load_model_and_tokenizer(model_name_or_path="{repo_id}")
        outputs = model(**tokenizer("ACGTACGT", return_tensors="pt")); outputs.last_hidden_state
        print("SHAPE", "{repo_id}", tuple(outputs.last_hidden_state.shape), type(tokenizer).__name__)
        """) for repo_id in STAND_INS]
    blocks.append(textwrap.dedent("""
        try: load_model_and_tokenizer("kuleshov-group/PlantCAD2-Large-l48-d1536")
        except Exception as e: print("ERROR", type(e).__name__, e)
        """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    printed = [line.split(" ", 2)[1:] for line in lines if line.startswith("SHAPE")]
    expected = [[repo_id, f"{SEED_SHAPES[folder]} {TOKENIZER[folder].__name__}"] for repo_id, folder in STAND_INS.items()]
    assert printed == expected
    error = next(line for line in lines if line.startswith("ERROR"))
    assert "CheckpointNotFoundError" in error and "HF_HUB_OFFLINE=1" in error and str(hub_cache) in error


@pytest.mark.parametrize("repo_id, folder", STAND_INS.items())
def test_golden_outputs_from_text_through_hub_ids(hub_cache, repo_id, folder):
    "Golden ids written out as DNA text, tokenized by the loaded tokenizer, give the golden logits and hidden states."
    golden = load_file(GOLDEN / folder / "golden.safetensors")
    model, tokenizer = offline_load(repo_id, hub_cache, task="mask")
    assert type(model) is CaduceusForMaskedLM and type(tokenizer) is TOKENIZER[folder]
    texts = [tokenizer.decode(row).upper() for row in golden["short.input_ids"].tolist()]  # the golden ids are all bases
    inputs = tokenizer(texts, add_special_tokens=False, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], golden["short.input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == golden["short.logits"].shape
    assert (logits - golden["short.logits"]).abs().max() <= 1e-4
    base, _ = offline_load(repo_id, hub_cache)  # task="embedding" is the default
    assert type(base) is CaduceusModel
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
    assert (hidden - golden["short.last_hidden_state"]).abs().max() <= 1e-4


def test_local_folder_and_registry_metadata(hub_cache):
    model, tokenizer = load_model_and_tokenizer(GOLDEN / "plantcad2-tiny", source="local")
    assert model.config.mixer_type == "mamba2" and tokenizer.model_max_length == 512  # unknown id: class default
    _, tokenizer = offline_load("kuleshov-group/PlantCAD2-Small-l24-d0768", hub_cache)
    assert tokenizer.model_max_length == 8192  # from the registry's context length


def test_classification_head_and_options(hub_cache):
    model, tokenizer = offline_load("kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16", hub_cache,
                                    task="classification", num_labels=3, pooling="max")
    assert type(model) is CaduceusForSequenceClassification and model.config.pooling == "max"
    with torch.no_grad():
        logits = model(**tokenizer(["ACGTAC", "GGGTTA"], return_tensors="pt")).logits
    assert logits.shape == (2, 3)


def test_dtype_and_device(hub_cache):
    model, _ = offline_load("kuleshov-group/PlantCaduceus_l32", hub_cache, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.device.type == "cpu"
    with pytest.raises(ValueError, match="bfloat16"):
        offline_load("kuleshov-group/PlantCaduceus_l32", hub_cache, dtype="float16", device="cpu")
    with pytest.raises(ValueError, match="dtype must be"):
        offline_load("kuleshov-group/PlantCaduceus_l32", hub_cache, dtype="int8")


@pytest.mark.parametrize("folder, text", [("caduceus-ph-tiny", "ACGT[MASK]ACGT"), ("plantcaduceus-tiny", "acgt[MASK]ACGT")])
def test_fill_mask_pipeline(folder, text):
    model, tokenizer = load_model_and_tokenizer(GOLDEN / folder, task="mask")
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    bases = ["A", "C", "G", "T"] if folder.startswith("caduceus") else ["a", "c", "g", "t"]
    results = fill(text, targets=bases)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = model(input_ids=ids).logits[0, ids[0].tolist().index(tokenizer.mask_token_id)].softmax(-1)
    assert sorted(r["token_str"] for r in results) == bases
    for r in results:
        assert r["score"] == pytest.approx(probs[tokenizer.convert_tokens_to_ids(r["token_str"])].item(), abs=1e-6)
        assert r["sequence"].upper() == text.upper().replace("[MASK]", r["token_str"].upper())


def test_loaded_tokenizer_rejects_non_dna(hub_cache):
    _, tokenizer = offline_load("kuleshov-group/caduceus-ph_seqlen-131k_d_model-256_n_layer-16", hub_cache)
    with pytest.raises(InvalidSequenceError, match="'Z'"):
        tokenizer("ACGZ")
    with pytest.raises(InvalidSequenceError, match="empty"):
        tokenizer("")


def test_unknown_id_offline_lists_close_ids(hub_cache):
    with pytest.raises(CheckpointNotFoundError, match="nor a known model id") as e:
        offline_load("kuleshov-group/caduceus-ps_seqlen-131k", hub_cache)
    assert "'kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16'" in str(e.value)


def test_known_id_offline_without_cache_says_how_to_get_it(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="hf download kuleshov-group/PlantCaduceus_l20") as e:
        offline_load("kuleshov-group/PlantCaduceus_l20", tmp_path)
    assert "offline" in str(e.value) and "local checkpoint folder" in str(e.value)


def test_missing_local_folder(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nope")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_model_and_tokenizer("kuleshov-group/PlantCaduceus_l20", source="local")
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)


def test_bad_arguments(hub_cache):
    ph = GOLDEN / "caduceus-ph-tiny"
    with pytest.raises(ValueError, match="task must be one of"):
        load_model_and_tokenizer(ph, task="generation")
    with pytest.raises(ValueError, match="source must be one of"):
        load_model_and_tokenizer(ph, source="s3")
    with pytest.raises(ValueError, match="revision"):
        load_model_and_tokenizer(ph, revision="v1")
    with pytest.raises(TypeError, match=r"\['colour'\]"):
        load_model_and_tokenizer(ph, colour="blue")


def test_mismatched_tokenizer_files_are_refused(tmp_path):
    "A Caduceus tokenizer_config.json in a plant checkpoint would feed wrong ids: refuse it at load time."
    shutil.copytree(GOLDEN / "plantcaduceus-tiny", tmp_path / "ckpt")
    shutil.copy(GOLDEN / "caduceus-ph-tiny" / "tokenizer_config.json", tmp_path / "ckpt")
    with pytest.raises(ValueError, match="does not match the model"):
        load_model_and_tokenizer(tmp_path / "ckpt")


def test_cache_checkpoint_serves_hub_ids(tmp_path):
    snapshot = cache_checkpoint(GOLDEN / "caduceus-ps-tiny", "someone/my-caduceus", tmp_path)
    assert resolve_checkpoint("someone/my-caduceus", cache_dir=tmp_path, local_files_only=True) == snapshot
    model, tokenizer = offline_load("someone/my-caduceus", tmp_path, task="mask")
    assert model.config.rcps and type(tokenizer) is CaduceusTokenizer


def test_registry_table_and_extension(monkeypatch):
    table = list_models()
    assert len(table) == 12 and set(STAND_INS) <= set(table["name"])
    assert list(table.columns[:9]) == ["name", "family", "rc_mode", "mixer", "d_model", "n_layer", "context_length",
                                       "tokenizer", "n_params"]
    monkeypatch.setattr("dnallm_nb.load.MODEL_REGISTRY", dict(MODEL_REGISTRY))
    package = Path(dnallm_nb.__file__).parent
    bundled = os.path.relpath(GOLDEN / "caduceus-ps-tiny", package)  # a folder given relative to the package
    register_model(ModelInfo("demo", "Caduceus", "PS", "mamba1", 32, 2, 1024, "caduceus", 1, package_folder=bundled))
    register_model(ModelInfo("broken-demo", "Caduceus", "PS", "mamba1", 32, 2, 1024, "caduceus", 1, package_folder="nope"))
    assert {"demo", "broken-demo"} <= set(list_models()["name"])
    assert resolve_checkpoint("demo") == resolve_checkpoint("demo", source="local") == package / bundled
    model, tokenizer = load_model_and_tokenizer("demo", task="mask")
    assert model.config.rcps and type(tokenizer) is CaduceusTokenizer
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_checkpoint("broken-demo")
    with pytest.raises(ValueError, match="already registered"):
        register_model(dnallm_nb.load.MODEL_REGISTRY["demo"])
    assert "demo" not in MODEL_REGISTRY  # the patched copy took the test entries


def _registry_config(info: ModelInfo):
    from dnallm_nb.configuration import CaduceusConfig
    plant = info.tokenizer == "plant"
    complement = [0, 1, 2, 6, 5, 4, 3, 7] if plant else [0, 1, 2, 3, 4, 5, 6, 10, 9, 8, 7, 11]
    ssm = {"d_state": 64, "d_conv": 4, "expand": 2, "headdim": 64} if info.mixer == "mamba2" else {"d_state": 16}
    return CaduceusConfig(d_model=info.d_model, n_layer=info.n_layer, vocab_size=8 if plant else 12, ssm_cfg=ssm,
                          rcps=info.rc_mode == "PS", complement_map=complement, mixer_type=info.mixer)


@pytest.mark.parametrize("name", list(MODEL_REGISTRY))
def test_registry_parameter_counts(name):
    "Each registry entry's n_params is the size of the model its numbers describe (built on the meta device)."
    info = MODEL_REGISTRY[name]
    with torch.device("meta"):
        model = CaduceusForMaskedLM(_registry_config(info))
    assert sum(p.numel() for p in model.parameters()) == info.n_params


def test_pad_token_id_is_aligned_with_the_tokenizer(hub_cache):
    plant, tokenizer = offline_load("kuleshov-group/PlantCaduceus_l32", hub_cache)  # its config says -100
    assert plant.config.pad_token_id == tokenizer.pad_token_id == 0
    with pytest.raises(ValueError, match=r"config.pad_token_id is 5 but CaduceusTokenizer pads with id 4.*pad_token_id=4"):
        offline_load("kuleshov-group/caduceus-ph_seqlen-131k_d_model-256_n_layer-16", hub_cache, pad_token_id=5)


def test_import_dnallm_nb_registers_the_auto_classes_cheaply():
    "In a fresh interpreter, `import dnallm_nb` alone lets every Auto class read a released layout."
    check = textwrap.dedent("""
        import sys
        import dnallm_nb
        from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                                  AutoTokenizer)
        assert "dnallm_nb.modeling" not in sys.modules and "transformers.modeling_utils" not in sys.modules
        folder = sys.argv[1]
        config = AutoConfig.from_pretrained(folder)
        built = [type(auto.from_pretrained(folder)).__name__
                 for auto in (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification)]
        print(type(config).__name__, *built, type(AutoModel.from_config(config)).__name__,
              type(AutoTokenizer.from_pretrained(folder)).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", check, str(GOLDEN / "caduceus-ps-tiny")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["CaduceusConfig", "CaduceusModel", "CaduceusForMaskedLM",
                                  "CaduceusForSequenceClassification", "CaduceusModel", "CaduceusTokenizer"]
