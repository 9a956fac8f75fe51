"""MLflow pyfunc wrapper of a registered MiniGPT-5: the weights stay a `MiniGPT5.save_pretrained` folder."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class MiniGPT5Model(mlflow.pyfunc.PythonModel):
    """Input column `prompt` -> columns `text` (the narration) and `image` (base64 PNG, always drawn);
    params: seed."""

    def load_context(self, context) -> None:
        from components.models.minigpt5 import MiniGPT5

        self.model = MiniGPT5.from_pretrained(context.artifacts["weights"]).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from components.models.autoencoder import pixels_to_images
        from training_jobs.pyfunc_models import _column, _encode_png

        seed = int((params or {}).get("seed", 0))
        texts, images = [], []
        for prompt in _column(model_input, "prompt"):
            text, image, _ = self.model.generate(prompt, seed=seed, force_image=True)
            texts.append(text)
            images.append(_encode_png(pixels_to_images(image)[0]))
        return pd.DataFrame({"text": texts, "image": images})
