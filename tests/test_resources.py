"""Workflow resources: jobs' memory from the model's size (workflow_config.job_mem_mb, ModelShape), and VISOR's
training data (an HF dataset folder in LLaVA-OneVision's format), frozen-host stage 2 and device options."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from visor_model import workflow_config as wc

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MB = 2**20

# The real checkpoints' geometry (config.json of llava-hf/llava-onevision-qwen2-0.5b-ov-hf and
# llava-hf/llava-v1.6-vicuna-7b-hf) and their weights (elements; bytes of their float16 safetensors).
OV_CONFIG = {
    "model_type": "llava_onevision", "vision_aspect_ratio": "anyres_max_9",
    "image_grid_pinpoints": [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)],
    "text_config": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2},
    "vision_config": {"image_size": 384, "patch_size": 14},
}
NEXT_CONFIG = {
    "model_type": "llava_next",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "text_config": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32},
    "vision_config": {"image_size": 336, "patch_size": 14},
}
OV_PARAMETERS, NEXT_PARAMETERS = 893_610_592, 7_063_427_072


def load_config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    return wc.check(config, SCHEMA, overlay=config, replace_workflow_config=True)


def header_only_checkpoint(folder: Path, config: dict, parameters: int) -> Path:
    """A folder with `config` and one safetensors file whose header declares `parameters` float16 elements (no
    data: ModelShape reads headers only)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    header = json.dumps({"weight": {"dtype": "F16", "shape": [parameters], "data_offsets": [0, 2 * parameters]}})
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    return folder


def real_shape(shape: wc.ModelShape, parameters: int) -> wc.ModelShape:
    """`shape` with the file bytes of the real float16 weights (the test files hold only a header)."""
    return wc.ModelShape(**{**shape.__dict__, "file_bytes": 2 * parameters})


def test_model_shape_of_the_real_checkpoints(tmp_path):
    ov = wc.ModelShape.read(header_only_checkpoint(tmp_path / "ov", OV_CONFIG, OV_PARAMETERS))
    # 729 tokens per crop, anyres_max_9: at most 10 crops' worth (7,290); the processor makes 1 + 36 crops
    assert (ov.parameters, ov.layers, ov.hidden, ov.kv_dim) == (OV_PARAMETERS, 24, 896, 128)
    assert (ov.tokens, ov.max_crops, ov.crop_values) == (7290 + wc.TEXT_TOKENS, 37, 3 * 384 * 384)
    nxt = wc.ModelShape.read(header_only_checkpoint(tmp_path / "next", NEXT_CONFIG, NEXT_PARAMETERS))
    assert (nxt.parameters, nxt.kv_dim, nxt.tokens, nxt.max_crops) == (NEXT_PARAMETERS, 4096, 5 * 576 + 256, 5)


def test_model_shape_of_a_shipped_checkpoint_counts_its_tensors():
    from safetensors.torch import load_file

    folder = REPO / "checkpoints" / "reference_ov"
    shape = wc.ModelShape.read(folder)
    tensors = [t for f in folder.glob("*.safetensors") for t in load_file(str(f)).values()]
    assert shape.parameters == sum(t.numel() for t in tensors)
    assert shape.file_bytes == sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    per_crop = (config["vision_config"]["image_size"] // config["vision_config"]["patch_size"]) ** 2
    assert shape.tokens == per_crop * 5 + wc.TEXT_TOKENS  # 2x2 grid at most, + the base image


def paper_config(device: str) -> dict:
    config = load_config(REPO / "config" / "paper.yaml")
    config["evaluation"]["device"] = config["visor"]["device"] = device
    return config


def test_evaluate_declares_what_the_real_models_load(tmp_path):
    """The paper profile on CUDA in bfloat16: NeXT-7B maps its 14.1 GB of float16 files and builds the bfloat16
    model on the host before moving it (the old rule declared 4,000 MB); activations are device memory."""
    config = paper_config("cuda")
    nxt = real_shape(wc.ModelShape.read(header_only_checkpoint(tmp_path / "n", NEXT_CONFIG, NEXT_PARAMETERS)),
                     NEXT_PARAMETERS)
    pixels = 4 * 5 * 3 * 336 * 336 * 4  # batch 4, every crop in float32
    expected = wc.RUNTIME_MB + math.ceil((2 * NEXT_PARAMETERS + 2 * NEXT_PARAMETERS + pixels) / MB)
    assert wc.job_mem_mb("evaluate", config, nxt) == expected == 28971
    assert wc.job_mem_mb("measure_latency", config, nxt) == wc.RUNTIME_MB + math.ceil(
        (4 * NEXT_PARAMETERS + pixels // 4) / MB)
    # on CPU the KV cache and hidden states of the batch join them
    cpu = paper_config("cpu")
    activations = 4 * nxt.tokens * (2 * 32 * 4096 + 8 * 4096) * 2
    assert wc.job_mem_mb("evaluate", cpu, nxt) == wc.RUNTIME_MB + math.ceil(
        (4 * NEXT_PARAMETERS + pixels + activations) / MB)


def test_visor_jobs_declare_the_data_they_hold(tmp_path):
    config = paper_config("cuda")
    ov = real_shape(wc.ModelShape.read(header_only_checkpoint(tmp_path / "o", OV_CONFIG, OV_PARAMETERS)),
                    OV_PARAMETERS)
    loaded = 2 * OV_PARAMETERS + 4 * OV_PARAMETERS  # float16 files + the float32 model (visor.dtype)
    crop = 37 * 3 * 384 * 384 * 4
    val = 3 * (100 + 100) * wc.SYNTHETIC_IMAGE_BYTES + 32 * crop
    train = 9000 * wc.SYNTHETIC_IMAGE_BYTES + 16 * crop
    assert wc.job_mem_mb("train_visor", config, ov) == wc.RUNTIME_MB + math.ceil((loaded + val + train) / MB)
    assert wc.job_mem_mb("label_policy", config, ov) == wc.RUNTIME_MB + math.ceil((loaded + val) / MB)
    # HF training data: its rows' decoded images
    config["visor"]["train_data"] = {"dataset": "lmms-lab/LLaVA-OneVision-Data", "limit": 20000}
    train = 20000 * wc.HF_IMAGE_BYTES + 16 * crop
    assert wc.job_mem_mb("train_visor", config, ov) == wc.RUNTIME_MB + math.ceil((loaded + val + train) / MB)
    # on CPU: gradients and AdamW moments of the whole model, or of under a third of it with the host frozen
    cpu = paper_config("cpu")
    full = wc.job_mem_mb("train_visor", cpu, ov)
    cpu["visor"]["stage2_freeze_host"] = True
    frozen = wc.job_mem_mb("train_visor", cpu, ov)
    assert abs((full - frozen) - 3 * 4 * (OV_PARAMETERS - OV_PARAMETERS // 3) / MB) <= 1


def test_offline_default_jobs_stay_small():
    """The reference models (0.2-0.6 M parameters): a job's runtime dominates; the measured peaks were 650 MB
    (evaluate) and 1.3 GB (train_visor on the 12-layer host, 3,000 + 3,000 steps of batch 16); the bounds stay
    under 3.5 GB."""
    config = load_config(REPO / "config" / "config.yaml")
    config["evaluation"]["device"] = config["visor"]["device"] = "cpu"
    shape = wc.ModelShape.read(REPO / "checkpoints" / "reference_ov")
    sizes = {rule: wc.job_mem_mb(rule, config, shape)
             for rule in ("evaluate", "measure_latency", "train_visor", "label_policy", "train_policy")}
    assert all(wc.RUNTIME_MB < mb < 3500 for mb in sizes.values()), sizes
    assert wc.job_mem_mb("train_reference", config) == wc.RUNTIME_MB + math.ceil(
        9000 * wc.SYNTHETIC_IMAGE_BYTES / MB) + 500


def test_job_mem_mb_names_what_is_missing():
    config = load_config(REPO / "config" / "config.yaml")
    with pytest.raises(ValueError, match="needs the model's shape"):
        wc.job_mem_mb("evaluate", config)
    with pytest.raises(ValueError, match="no memory model for rule 'aggregate'"):
        wc.job_mem_mb("aggregate", config, wc.ModelShape.read(REPO / "checkpoints" / "reference_ov"))


def test_visor_options_are_in_the_schema():
    config = load_config(REPO / "config" / "config.yaml")
    assert {k: config["visor"][k] for k in ("device", "dtype", "stage2_freeze_host", "train_data")} == {
        "device": "auto", "dtype": "float32", "stage2_freeze_host": False, "train_data": None}
    bad = copy.deepcopy(config)
    bad["visor"]["train_data"] = {"revision": "main"}
    with pytest.raises(ValueError) as error:
        wc.check(bad, SCHEMA)
    assert "config error at visor.train_data: 'dataset' is a required property" in str(error.value)
    assert "config error at visor.train_data.revision: 'main' does not match" in str(error.value)


# --- VISOR's training data and frozen host ---------------------------------------------------------------


def llava_onevision_folder(folder: Path, examples) -> Path:
    """A local dataset folder in LLaVA-OneVision's data format (image, conversations), as datasets writes it."""
    import datasets

    rows = {"id": [str(i) for i in range(len(examples))], "image": [e.image for e in examples],
            "conversations": [[{"from": "human", "value": f"<image>\n{e.question}"},
                               {"from": "gpt", "value": e.answer}] for e in examples]}
    table = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    (folder / "data").mkdir(parents=True)
    table.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    from visor_model.reference.tasks import write_task

    root = tmp_path_factory.mktemp("tasks")
    for name in ("synth_background", "synth_marker"):
        write_task(name, root / name, {"train": 6, "val": 4, "test": 1}, seed=0)
    return [root / "synth_background", root / "synth_marker"]


def test_load_hf_examples_reads_the_llava_onevision_format(tasks_dir, tmp_path):
    from visor_model.methods.visor.config import TrainData
    from visor_model.methods.visor.data import load_hf_examples, read_split

    synthetic = read_split(tasks_dir, "train")
    folder = llava_onevision_folder(tmp_path / "ov_data", synthetic)
    examples = load_hf_examples(TrainData(str(folder)))
    assert [(e.question, e.answer, e.image.size) for e in examples] == [
        (e.question, e.answer, e.image.size) for e in synthetic]
    assert examples[3].image.tobytes() == synthetic[3].image.tobytes()
    assert len(load_hf_examples(TrainData(str(folder), limit=5))) == 5
    with pytest.raises(RuntimeError, match="could not load VISOR training data"):
        load_hf_examples(TrainData(str(tmp_path / "ov_data"), split="validation"))


@pytest.mark.slow
def test_visor_trains_on_a_dataset_folder_as_on_the_same_rows(tasks_dir, tmp_path):
    """Universal training from an HF dataset folder in LLaVA-OneVision's format gives the weights that training
    on the same rows from the synthetic splits gives; with stage2_freeze_host the host is left unchanged."""
    from safetensors.torch import load_file

    from visor_model.methods.visor.config import visor_options
    from visor_model.methods.visor.data import read_split
    from visor_model.methods.visor.training import train_universal_checkpoint

    base = REPO / "checkpoints" / "reference_ov"
    folder = llava_onevision_folder(tmp_path / "ov_data", read_split(tasks_dir, "train"))
    # no curriculum: it weighs the synthetic tasks' rows by their task and marker size, which dataset rows lack
    options = {"stage1_steps": 1, "stage2_steps": 2, "batch_size": 3, "warmup_steps": 1, "viable_per_task": 2,
               "inference_batch_size": 4, "device": "cpu", "curriculum": False}
    outputs = {}
    for name, extra in {"splits": {}, "dataset": {"train_data": {"dataset": str(folder)}},
                        "frozen": {"stage2_freeze_host": True}}.items():
        universal, architecture, policy, device = visor_options({**options, **extra})
        train_universal_checkpoint(str(base), tasks_dir, tmp_path / name, tmp_path / f"state_{name}", universal,
                                   architecture, policy, device=device, base_sha256="ab" * 32)
        outputs[name] = {f.name: load_file(str(f)) for f in (tmp_path / name).glob("*.safetensors")}
    assert outputs["splits"].keys() == outputs["dataset"].keys()
    for file, tensors in outputs["splits"].items():
        assert all(tensors[k].equal(outputs["dataset"][file][k]) for k in tensors), file
    host = load_file(str(base / "model.safetensors"))
    assert all(host[k].equal(v) for k, v in outputs["frozen"]["model.safetensors"].items())
    assert not all(host[k].equal(v) for k, v in outputs["splits"]["model.safetensors"].items())
    record = json.loads((tmp_path / "frozen" / "visor_config.json").read_text())["training"]
    assert record["base_sha256"] == "ab" * 32 and record["device"] == {"device": "cpu", "dtype": "float32"}
    assert record["universal"]["stage2_freeze_host"] is True
