"""Narration metrics on textbook cases (Papineni et al. 2002 / nltk's documented values, Lin 2004,
Banerjee & Lavie 2005), S-BERT offline, and MM-Relevance's -1 / -2 conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from components.metrics.narration import (
    GENERATED_NOT_NEEDED,
    NEEDED_NOT_GENERATED,
    SentenceBertScorer,
    Turn,
    brevity_penalty,
    corpus_bleu,
    meteor,
    mm_relevance,
    mm_relevance_from_similarities,
    narration_metrics,
    rouge_l,
    sentence_bleu,
    tokenize,
)

# Papineni et al. 2002, example 1 (also nltk's bleu_score doctests); tokens are the words.
HYP1 = tuple(
    ["It", "is", "a", "guide", "to", "action", "which", "ensures", "that", "the", "military", "always", "obeys", "the", "commands", "of", "the", "party"]
)
REF1A = tuple(
    ["It", "is", "a", "guide", "to", "action", "that", "ensures", "that", "the", "military", "will", "forever", "heed", "Party", "commands"]
)
REF1B = tuple(
    ["It", "is", "the", "guiding", "principle", "which", "guarantees", "the", "military", "forces", "always", "being", "under", "the", "command", "of", "the", "Party"]
)
REF1C = tuple(["It", "is", "the", "practical", "guide", "for", "the", "army", "always", "to", "heed", "the", "directions", "of", "the", "party"])
HYP2 = tuple(["he", "read", "the", "book", "because", "he", "was", "interested", "in", "world", "history"])
REF2A = tuple(["he", "was", "interested", "in", "world", "history", "because", "he", "read", "the", "book"])


def test_bleu_matches_the_documented_values():
    # float64 exp of a mean of 4 logs: ~1e-16 per step, so 1e-12 absorbs only a different summation
    # order than nltk's, and the values are quoted to 16 digits; one n-gram more moves BLEU by 1e-2.
    assert sentence_bleu([REF1A, REF1B, REF1C], HYP1) == pytest.approx(0.5045666840058485, abs=1e-12)
    assert corpus_bleu([[REF1A, REF1B, REF1C], [REF2A]], [HYP1, HYP2]) == pytest.approx(
        0.5920778868801042, abs=1e-12
    )
    average = (sentence_bleu([REF1A, REF1B, REF1C], HYP1) + sentence_bleu([REF2A], HYP2)) / 2
    assert average == pytest.approx(0.6223247442490669, abs=1e-12)


def test_bleu_1_is_the_modified_unigram_precision_times_brevity_penalty():
    # Papineni's "the the the ..." example: modified unigram precision 2/7, candidate longer than refs.
    refs = [tokenize("The cat is on the mat."), tokenize("There is a cat on the mat.")]
    hyp = tokenize("the the the the the the the")
    # Count ratios in float64 here and below: a few roundings (1e-16), far under approx's rel 1e-6.
    assert sentence_bleu(refs, hyp, (1.0,)) == pytest.approx(2 / 7)
    # BLEU-1 / BLEU-2 of example 1 from its clipped precisions 17/18 and 10/17, BP = 1 (18 > 16).
    assert sentence_bleu([REF1A, REF1B, REF1C], HYP1, (1.0,)) == pytest.approx(17 / 18)
    assert sentence_bleu([REF1A, REF1B, REF1C], HYP1, (0.5, 0.5)) == pytest.approx(
        math.sqrt(17 / 18 * 10 / 17)
    )


def test_brevity_penalty():
    assert brevity_penalty(ref_len=12, hyp_len=12) == 1.0
    assert brevity_penalty(ref_len=10, hyp_len=13) == 1.0
    # exp of an exact ratio in float64: 1 ulp (1e-16) against approx's default rel 1e-6
    assert brevity_penalty(ref_len=13, hyp_len=10) == pytest.approx(math.exp(1 - 13 / 10))
    assert brevity_penalty(ref_len=5, hyp_len=0) == 0.0
    # A perfect but short candidate is penalised: 4 of 6 reference words, in order.
    ref, hyp = tokenize("the cat sat on the mat"), tokenize("the cat sat on")
    assert sentence_bleu([ref], hyp, (1.0,)) == pytest.approx(math.exp(1 - 6 / 4))


def test_rouge_l_matches_lins_example():
    # Lin 2004, 3.1: with S1 as reference, S2 scores 3/4 and S3 2/4 (beta = 1).
    s1, s2, s3 = (
        tokenize("police killed the gunman"),
        tokenize("police kill the gunman"),
        tokenize("the gunman kill police"),
    )
    # LCS ratios in float64: one or two roundings, far under approx's default rel 1e-6
    assert rouge_l(s1, s2) == pytest.approx(0.75)
    assert rouge_l(s1, s3) == pytest.approx(0.5)
    # Unequal lengths: LCS 4, R = 4/6, P = 4/5, F1 = 2PR / (P + R).
    r, p = 4 / 6, 4 / 5
    assert rouge_l(tokenize("a b c d e f"), tokenize("a x b d f")) == pytest.approx(2 * p * r / (p + r))
    assert rouge_l(tokenize("a b"), []) == 0.0


def test_meteor_matches_the_paper_fragmentation_example_and_nltk():
    # Banerjee & Lavie 2005: 6 matches in 2 chunks ("the president" / "spoke to the audience").
    score = meteor(
        [tokenize("the president then spoke to the audience")],
        tokenize("the president spoke to the audience"),
    )
    p, r = 1.0, 6 / 7
    fmean = 10 * p * r / (r + 9 * p)
    # the paper's formula in float64 (a few roundings of numbers <= 1) under approx's default rel 1e-6
    assert score == pytest.approx(fmean * (1 - 0.5 * (2 / 6) ** 3))
    # nltk's documented meteor_score([reference1], hypothesis1) for Papineni's example.
    assert round(meteor([REF1A], HYP1), 4) == 0.6944


def test_meteor_matches_stems_offline():
    exact_only = meteor([tokenize("police killed the gunman")], tokenize("police shot the gunman"))
    stemmed = meteor([tokenize("police killed the gunman")], tokenize("police kill the gunman"))
    # float64 formula of exact counts: rounding 1e-16 under approx's default rel 1e-6
    assert stemmed == pytest.approx(1 - 0.5 * (1 / 4) ** 3)  # 'kill' ~ 'killed': 4 matches, one chunk
    assert stemmed > exact_only


@pytest.mark.slow  # importing sentence-transformers (and scikit-learn under it) takes 10-30 s here
def test_sentence_bert_loads_offline_and_ranks_paraphrases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scorer = SentenceBertScorer()
    sims = scorer.similarity(
        ["a cat sits on the mat", "a cat sits on the mat"],
        ["a cat is sitting on the mat", "stock markets fell sharply today"],
    )
    assert sims[0] > 0.85 and sims[1] < 0.3


def test_mm_relevance_conventions_on_a_hand_made_dialogue():
    # Parts: two comparable (0.8, 0.6), one needed but not generated, one generated but not needed.
    sims = [0.8, 0.6, NEEDED_NOT_GENERATED, GENERATED_NOT_NEEDED]
    precision = 1.4 / 3  # over the 3 parts generated
    recall = 1.4 / 3  # over the 3 parts needed
    # sums and ratios of the given similarities in float64: ~1e-16, under approx's default rel 1e-6
    assert mm_relevance_from_similarities(sims) == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    only_extra = [0.5, GENERATED_NOT_NEEDED, GENERATED_NOT_NEEDED]  # P = 0.5 / 3, R = 0.5 / 1
    assert mm_relevance_from_similarities(only_extra) == pytest.approx(2 * (0.5 / 3) * 0.5 / (0.5 / 3 + 0.5))
    assert mm_relevance_from_similarities([NEEDED_NOT_GENERATED]) == 0.0


def test_mm_relevance_with_clip_codes_missing_and_extra_images(tiny_clip_dir):
    from components.metrics.clip_score import ClipEmbedder

    clip = ClipEmbedder(tiny_clip_dir)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    turns = [
        Turn("a red circle", "a red circle", predicted_image=img, reference_image=img, dialogue="d1"),
        Turn("hello", "", predicted_image=None, reference_image=img, dialogue="d1"),
        Turn("", "fine thanks", predicted_image=img, reference_image=None, dialogue="d2"),
    ]
    score, coded = mm_relevance(turns, clip)
    # Cosine of an fp32 embedding (32 dims) with itself: normalisation and dot product are within
    # (32 + 3) * 2^-24 = 2e-6 of 1 (Higham's dot-product bound), under abs 1e-5; so is F1 of 2/3 below.
    assert coded["d1"] == [
        pytest.approx(1.0, abs=1e-5),
        pytest.approx(1.0, abs=1e-5),
        GENERATED_NOT_NEEDED,
        NEEDED_NOT_GENERATED,
    ]
    assert coded["d2"] == [NEEDED_NOT_GENERATED, GENERATED_NOT_NEEDED]
    d1 = mm_relevance_from_similarities(coded["d1"])  # P = R = 2/3
    assert d1 == pytest.approx(2 / 3, abs=1e-5)
    assert score == pytest.approx((d1 + 0.0) / 2)  # one float64 halving: exact up to 1e-16


def test_narration_metrics_aggregate_per_dialogue_then_over_dialogues():
    turns = [
        Turn("the cat sat on the mat", "the cat sat on the mat", dialogue="a"),
        Turn("", "a reply was needed here", dialogue="a"),  # needed but not generated: zeros
        Turn("an extra line", "", dialogue="a"),  # no reference text: not scored
        Turn("police kill the gunman", "police killed the gunman", dialogue="b"),
    ]
    m = narration_metrics(turns)
    assert m.turns_scored == 3 and m.dialogues == 2
    b_bleu1 = sentence_bleu(
        [tokenize("police killed the gunman")], tokenize("police kill the gunman"), (1.0,)
    )
    # means of per-turn float64 scores: a few roundings, far under approx's default rel 1e-6
    assert m.bleu_1 == pytest.approx(((1.0 + 0.0) / 2 + b_bleu1) / 2)
    assert m.rouge_l == pytest.approx(((1.0 + 0.0) / 2 + 0.75) / 2)
    assert m.sbert is None and m.mm_relevance is None


def test_character_level_bleu_reproduces_minigpt5_mmdialog_script():
    # MiniGPT-5's script passes raw strings to nltk's BLEU, which counts characters.
    m = narration_metrics([Turn("abcd", "abce")], unit="char")
    # count ratios in float64 (1e-16) under approx's default rel 1e-6
    assert m.bleu_1 == pytest.approx(3 / 4)
    assert m.bleu_2 == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
