"""What every metric loads: images (from PIL images or paths) and CLIP models with their preprocessor.

FID's CLIP extractor and the CLIP score read the same kind of folder (a transformers CLIP model, or
a genops clip_evaluator folder), so both load it here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

ImageLike = Image.Image | str | Path

# Written by `components/models/clip_evaluator.py` beside a genops-trained evaluator CLIP, which
# preprocesses as OpenAI CLIP does (bicubic resize to the tower's size, CLIP mean/std).
GENOPS_CLIP_CONFIG = "genops_clip_evaluator.json"
# clip_base subclasses the evaluator (same towers, same OpenAI CLIP preprocessing), its folders carry this file.
GENOPS_CLIP_BASE_CONFIG = "genops_clip_base.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_rgb(image: ImageLike) -> Image.Image:
    """A PIL image in RGB from a PIL image or a path (the error names the file)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def load_clip_image_processor(path: Path, image_size: int):
    """The image processor saved with a CLIP folder, or OpenAI CLIP's for a genops evaluator folder."""
    from transformers import CLIPImageProcessorPil

    if (path / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(path)
    if (path / GENOPS_CLIP_CONFIG).is_file() or (path / GENOPS_CLIP_BASE_CONFIG).is_file():
        logger.info("%s is a genops CLIP folder: OpenAI CLIP preprocessing at %d px", path, image_size)
        return CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=list(OPENAI_CLIP_MEAN),
            image_std=list(OPENAI_CLIP_STD),
        )
    raise FileNotFoundError(
        f"CLIP model folder {path} has no preprocessor_config.json: save the model's CLIPImageProcessor "
        "beside it so evaluation preprocesses images as the model was trained"
    )


def load_clip_model(model_path: str | Path, vision_only: bool = False):
    """(model, image processor) from a local CLIP folder.

    `vision_only` also accepts a `CLIPVisionModelWithProjection` folder (an image tower alone, enough
    for FID features); otherwise the folder must hold a full `CLIPModel`.
    """
    from transformers import AutoConfig, CLIPModel, CLIPVisionModelWithProjection

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"CLIP model folder {path} has no config.json")
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type == "clip":
        model = CLIPModel.from_pretrained(path)
    elif model_type == "clip_vision_model" and vision_only:
        model = CLIPVisionModelWithProjection.from_pretrained(path)
    else:
        wanted = "a CLIP model or image tower" if vision_only else "a CLIP model (CLIPModel)"
        raise ValueError(f"{path} holds a {model_type!r} model; this needs {wanted}")
    vision_config = getattr(model.config, "vision_config", model.config)
    return model, load_clip_image_processor(path, vision_config.image_size)
