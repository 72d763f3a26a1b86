"""The "reads like the corpus" score tells gibberish from learned text."""

from components.evaluate.samples import bigram_validity, corpus_bigrams

CORPUS = ["Mira lives in Ashford. Mira is a baker.", "Tom has 3 apples. Now Tom has 7 apples."]


def test_learned_text_scores_high_and_repetition_scores_low():
    bigrams = corpus_bigrams(CORPUS)
    good = [{"prompt": "Mira lives in", "completion": " Ashford. Mira is a baker."}]
    babble = [{"prompt": "Mira lives in", "completion": " seventeen seventeen seventeen apples apples"}]
    assert bigram_validity(good, bigrams) == 1.0
    assert bigram_validity(babble, bigrams) == 0.0
    assert bigram_validity([{"prompt": "x", "completion": "���"}], bigrams) == 0.0
