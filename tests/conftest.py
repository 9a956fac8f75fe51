"""Session-wide test set-up shared by every test directory.

Triton reads TRITON_INTERPRET when it is first imported, so it is set here, before any test module
can import triton: without a CUDA device, kernels run on CPU tensors through the interpreter.
Hugging Face hub access is switched off: nothing may download at test time.
"""

import os
import shutil
import tempfile

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Registry models downloaded by tests go to a throwaway cache, not ~/.cache/genops.
os.environ.setdefault("GENOPS_MODEL_CACHE", tempfile.mkdtemp(prefix="genops-test-model-cache-"))


import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs a cluster (starting Ray costs seconds)."""
    import ray

    from training_jobs.cluster import connect_ray

    connect_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny synthetic world, its caption datasets validated and prepared in-process, and a tokenizer.

    Returns the root holding `data/prepared/<dataset>/` and `data/tokenizer/`, laid out like the
    DVC outputs of a checkout.
    """
    from pathlib import Path

    from components.config import load_config
    from components.data.pipeline_config import DataConfig
    from components.data.shards import split_texts
    from components.data.synthetic import generate_world
    from components.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("tiny_data")
    data = root / "data"
    cfg = load_config(DataConfig, Path(__file__).parents[1] / "training_jobs" / "configs" / "data" / "tiny.yaml")
    generate_world(cfg.world, data / "raw")
    names = ("laion_short", "cc3m")
    _prepare_tiny(data, names)
    texts = [text for name in names for text in split_texts(data / "prepared" / name, "train")]
    train_bpe_tokenizer(texts, cfg.tokenizer, data / "tokenizer")
    return root


@pytest.fixture(scope="session")
def tiny_text_data(tiny_data):
    """`tiny_data` plus every other text corpus llm_base learns (ParaImage, VIST, MMDialog), prepared in the same root."""
    _prepare_tiny(tiny_data / "data", ("paraimage_big", "paraimage_small", "vist", "mmdialog"))
    return tiny_data


@pytest.fixture(scope="session")
def tiny_mario_data(tiny_data):
    """`tiny_data` plus the text-rich `mario_laion` (VLAD, the Fine-tuned SD row) and the `mario_eval` prompts
    (Table I), prepared in the same root."""
    _prepare_tiny(tiny_data / "data", ("mario_laion", "mario_eval"))
    return tiny_data


def _prepare_tiny(data, names) -> None:
    """Validate and prepare the tiny profile's datasets `names` from data/raw into data/validated, data/prepared."""
    from pathlib import Path

    from components.config import load_config
    from components.data.formats import read_corpus
    from components.data.pipeline_config import DataConfig
    from components.data.prepare import prepare_dataset, validate_corpus

    cfg = load_config(DataConfig, Path(__file__).parents[1] / "training_jobs" / "configs" / "data" / "tiny.yaml")
    for name in names:
        spec = cfg.spec(name)
        validate_corpus(read_corpus(spec.format, data / "raw" / name), data / "validated" / name, dataset=name,
                        fmt=spec.format, source=data / "raw" / name, cfg=cfg.validation_for(name))
        prepare_dataset(data / "validated" / name, data / "prepared" / name, dataset=name,
                        split_cfg=cfg.split_for(name), shard_cfg=cfg.shards)
