"""The papers' evaluation metrics, computed offline.

- `fid`: Fréchet distance with pluggable extractors (`InceptionExtractor`, `ClipImageExtractor`),
  streamed statistics, cached reference statistics, Inception Score (`inception.py`: the network).
- `clip_score`: CLIP score (w = 1, clipped at 0), CLIP-I, CLIP-T.
- `ocr`: MARIO-Eval accuracy / precision / recall / F-measure with RapidOCR (PP-OCRv4, ONNX).
- `faithfulness`: object / attribute / location precision on the synthetic scenes.
- `narration`: BLEU-1/2, ROUGE-L, METEOR, S-BERT, MM-Relevance.
- `samples`: the folder and file formats the metrics read.
"""

from components.metrics.clip_score import TEXTDIFFUSER_PREFIX, ClipEmbedder, ClipScores, clip_scores
from components.metrics.faithfulness import (
    DetectorConfig,
    FaithfulnessMetrics,
    NamedObject,
    ObjectJudgement,
    aggregate,
    detect_scene,
    judge,
    parse_prompt_objects,
    text_faithfulness,
)
from components.metrics.fid import (
    ClipImageExtractor,
    FeatureExtractor,
    FeatureStatistics,
    FidResult,
    InceptionExtractor,
    cached_reference_statistics,
    compute_statistics,
    fid_from_statistics,
    frechet_distance,
    inception_score,
)
from components.metrics.inception import FIDInceptionV3
from components.metrics.narration import (
    NarrationMetrics,
    SentenceBertScorer,
    Turn,
    corpus_bleu,
    meteor,
    mm_relevance,
    narration_metrics,
    rouge_l,
    sentence_bleu,
    tokenize,
)
from components.metrics.ocr import OcrEngine, OcrMetrics, mario_eval, ocr_metrics, quoted_words, score_words

__all__ = [
    "TEXTDIFFUSER_PREFIX",
    "ClipEmbedder",
    "ClipImageExtractor",
    "ClipScores",
    "DetectorConfig",
    "FIDInceptionV3",
    "FaithfulnessMetrics",
    "FeatureExtractor",
    "FeatureStatistics",
    "FidResult",
    "InceptionExtractor",
    "NamedObject",
    "NarrationMetrics",
    "ObjectJudgement",
    "OcrEngine",
    "OcrMetrics",
    "SentenceBertScorer",
    "Turn",
    "aggregate",
    "cached_reference_statistics",
    "clip_scores",
    "compute_statistics",
    "corpus_bleu",
    "detect_scene",
    "fid_from_statistics",
    "frechet_distance",
    "inception_score",
    "judge",
    "mario_eval",
    "meteor",
    "mm_relevance",
    "narration_metrics",
    "ocr_metrics",
    "parse_prompt_objects",
    "quoted_words",
    "rouge_l",
    "score_words",
    "sentence_bleu",
    "text_faithfulness",
    "tokenize",
]
