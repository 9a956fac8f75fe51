"""Word and noun counts for caption statistics (ParaDiffusion Table 1: average words, average nouns).

No tagger model can be downloaded here, so nouns are counted against the WordNet 3.0 part-of-speech
index (shipped in `lexicon/wordnet_pos.json.gz`, extracted from spacy-lookups-data; license in
`lexicon/WORDNET_LICENSE.txt`). A word WordNet knows only as a noun counts as a noun; a word that is
also an adjective, verb or adverb ("red", "top", "light") counts when it heads a noun phrase: it
follows a determiner, number or possible adjective, and no possible noun follows it. This approximates what a POS
tagger reports on descriptive captions; the statistic is labelled as such wherever it is written.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import lru_cache
from pathlib import Path

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:\.\d+)?")

_DETERMINERS = frozenset(
    "a an the this that these those my your his her its our their each every some any no another "
    "one two three four five six seven eight nine ten several many few both all".split()
)
_CLOSED_CLASS = _DETERMINERS | frozenset(
    "i you he she it we they me him us them who whom whose which what where when why how "
    "and or but nor so yet if than then as of in on at by for with from to into onto over under "
    "above below near beside between behind across along around through up down out off is are was "
    "were be been being am has have had do does did not there here".split()
)


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, object]:
    path = Path(__file__).parent / "lexicon" / "wordnet_pos.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return {
        "noun_only": frozenset(data["noun_only"]),
        "noun_and_other": frozenset(data["noun_and_other"]),
        "nouns": frozenset(data["noun_only"]) | frozenset(data["noun_and_other"]),
        "adjectives": frozenset(data["adjectives"]),
        "irregular_plurals": data["irregular_plurals"],
    }


def words(text: str) -> list[str]:
    """The words of a text (letters with an optional apostrophe part, or numbers)."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    return len(words(text))


def _singular(word: str, lexicon: dict[str, object]) -> str:
    irregular = lexicon["irregular_plurals"]
    if word in irregular:
        return irregular[word]
    known = lexicon["nouns"]
    for suffix, replacement in (("ies", "y"), ("ves", "f"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            candidate = word[: -len(suffix)] + replacement
            if candidate in known:
                return candidate
    return word


def count_nouns(text: str) -> int:
    """Approximate number of nouns in `text` (see the module docstring for the rule)."""
    lexicon = _lexicon()
    tokens = [w.lower() for w in words(text)]
    lemmas = [_singular(t, lexicon) for t in tokens]
    count = 0
    for i, lemma in enumerate(lemmas):
        if tokens[i] in _CLOSED_CLASS or lemma.isdigit():
            continue
        if lemma in lexicon["noun_only"]:
            count += 1
            continue
        if lemma not in lexicon["noun_and_other"]:
            continue
        prev = lemmas[i - 1] if i > 0 else ""
        nxt = lemmas[i + 1] if i + 1 < len(lemmas) and tokens[i + 1] not in _CLOSED_CLASS else ""
        opens_phrase = prev in _DETERMINERS or prev.isdigit() or prev in lexicon["adjectives"]
        noun_follows = nxt in lexicon["noun_only"] or nxt in lexicon["noun_and_other"]
        if opens_phrase and not noun_follows:
            count += 1
    return count
