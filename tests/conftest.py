"""Session-wide test set-up shared by every test directory.

Triton reads TRITON_INTERPRET when it is first imported, so it is set here, before any test module
can import triton: without a CUDA device, kernels run on CPU tensors through the interpreter.
Hugging Face hub access is switched off: nothing may download at test time.
"""

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
