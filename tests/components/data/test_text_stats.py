from components.data.text_stats import count_nouns, count_words


def test_word_count_ignores_punctuation():
    assert count_words("A red circle, at the top-left; it's 3.5 cm.") == 10


def test_noun_count_on_descriptive_captions():
    # a POS tagger: circle/NN, left/NN, background/NN ("red", "top", "gray" are adjectives here)
    assert count_nouns("a small red circle at the top left on a gray background") == 3
    assert count_nouns("The dog chased two cats across the garden while the children watched.") == 4
    assert count_nouns("A wooden table with three apples and a knife near the window.") == 4


def test_noun_count_handles_plurals_and_empty_text():
    assert count_nouns("three circles and two geese") == 2
    assert count_nouns("") == 0
