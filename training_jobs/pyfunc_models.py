"""MLflow pyfunc wrappers of the registered models: the weights stay a Hugging Face folder.

Each wrapper loads the `weights` artifact with the model's own `from_pretrained`-style loader, so a
registered version is usable both as `mlflow.pyfunc.load_model(uri).predict(df)` and, for serving
and export, as a plain folder (`weights/` in the run's artifacts). Images travel as base64 PNG.
"""

from __future__ import annotations

import base64
import io

import mlflow.pyfunc
import pandas as pd
import torch
from PIL import Image


def _decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def _encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _column(frame: pd.DataFrame, name: str) -> list:
    if name not in frame.columns:
        raise ValueError(f"input needs a column {name!r}; got columns {list(frame.columns)}")
    return frame[name].tolist()


class AutoencoderModel(mlflow.pyfunc.PythonModel):
    """Input column `image` (base64 PNG) -> columns `latent` (scaled latent, nested lists) and `reconstruction`."""

    def load_context(self, context) -> None:
        from components.models.autoencoder import load_autoencoder

        self.vae = load_autoencoder(context.artifacts["weights"]).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from components.models.autoencoder import (
            decode_latents,
            encode_latents,
            images_to_pixels,
            pixels_to_images,
        )

        pixels = images_to_pixels([_decode_png(t) for t in _column(model_input, "image")], self.vae.config.sample_size)
        with torch.no_grad():
            latents = encode_latents(self.vae, pixels)
            images = pixels_to_images(decode_latents(self.vae, latents))
        return pd.DataFrame({"latent": [l.tolist() for l in latents], "reconstruction": [_encode_png(i) for i in images]})


class ClipEvaluatorModel(mlflow.pyfunc.PythonModel):
    """Input column `text` and/or `image` (base64 PNG) -> normalised `text_embedding` / `image_embedding`."""

    def load_context(self, context) -> None:
        from components.models.clip_evaluator import ClipEvaluator

        self.clip = ClipEvaluator.from_pretrained(context.artifacts["weights"]).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from components.models.autoencoder import images_to_pixels

        out = pd.DataFrame(index=model_input.index)
        with torch.no_grad():
            if "text" in model_input.columns:
                out["text_embedding"] = [e.tolist() for e in self.clip.embed_texts(_column(model_input, "text"))]
            if "image" in model_input.columns:
                pixels = images_to_pixels([_decode_png(t) for t in _column(model_input, "image")], self.clip.image_size)
                out["image_embedding"] = [e.tolist() for e in self.clip.embed_images(pixels)]
        if out.columns.empty:
            raise ValueError(f"input needs a column 'text' or 'image'; got columns {list(model_input.columns)}")
        return out


class ClipBaseModel(ClipEvaluatorModel):
    """The base CLIP (`clip_base`): the same inputs and outputs as the evaluator's wrapper, its own weights."""

    def load_context(self, context) -> None:
        from components.models.clip_base import ClipBase

        self.clip = ClipBase.from_pretrained(context.artifacts["weights"]).eval()


class TextGenerationModel(mlflow.pyfunc.PythonModel):
    """Input column `prompt` -> column `continuation`; params: max_new_tokens, temperature (0 = greedy), top_k, seed."""

    def load_context(self, context) -> None:
        from components.models.llm_base import LlmBase

        self.llm = LlmBase.from_pretrained(context.artifacts["weights"]).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        params = params or {}
        top_k = int(params.get("top_k", 0))
        continuations = self.llm.generate(
            _column(model_input, "prompt"),
            max_new_tokens=int(params.get("max_new_tokens", 32)),
            temperature=float(params.get("temperature", 0.0)),
            top_k=top_k or None,
            seed=int(params.get("seed", 0)),
        )
        return pd.DataFrame({"continuation": continuations})


class TextToImageModel(mlflow.pyfunc.PythonModel):
    """Input column `prompt` -> column `image` (base64 PNG); params: steps, guidance_scale, seed."""

    def load_context(self, context) -> None:
        from pathlib import Path

        from components.models.autoencoder import load_autoencoder
        from components.models.sd_base import SDBase

        weights = Path(context.artifacts["weights"])
        self.model = SDBase.from_pretrained(weights).eval()
        self.vae = load_autoencoder(weights / "vae").eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from components.models.autoencoder import pixels_to_images

        params = params or {}
        with torch.no_grad():
            pixels = self.model.generate(
                _column(model_input, "prompt"), self.vae,
                num_inference_steps=int(params.get("steps", 30)),
                guidance_scale=float(params.get("guidance_scale", 3.0)),
                generator=torch.Generator().manual_seed(int(params.get("seed", 0))),
            )
        return pd.DataFrame({"image": [_encode_png(i) for i in pixels_to_images(pixels)]})
