"""Pseudo-queries for label-free adaptation: ICT sentences, cleaning LLM answers, the round-trip
filter. Real SciFact abstracts; the retriever of the filter is real BM25."""
from __future__ import annotations

import pytest

from rerank.train.pseudo import PseudoQuery, clean_query, ict_queries, round_trip_filter, sentences, usable_query


def test_sentences_split_on_full_stops_before_a_capital_or_digit():
    assert sentences("One two. Three four? 5 six! e.g. seven") == ["One two.", "Three four?", "5 six! e.g. seven"]


def test_unpunctuated_text_is_cut_into_runs_of_words():
    from rerank.train.pseudo import pieces

    text = " ".join(f"w{i}" for i in range(30))
    assert pieces(text, chunk_words=12) == [" ".join(f"w{i}" for i in range(a, min(a + 12, 30))) for a in (0, 12, 24)]
    assert pieces("One sentence here. Another one there.") == ["One sentence here.", "Another one there."]


def test_ict_queries_are_seeded_sentences_removed_as_asked(scifact_corpus):
    corpus = {pid: scifact_corpus[pid] for pid in sorted(scifact_corpus)[:200]}
    removed = ict_queries(corpus, 30, seed=3, remove=1.0)
    assert len(removed) == 30 and len({q.source for q in removed}) == 30
    assert removed == ict_queries(corpus, 30, seed=3, remove=1.0)  # seeded
    for q in removed:
        assert q.kind == "ict" and q.id == f"ict-{q.source}"
        assert q.text in corpus[q.source].text and q.text not in q.passage.text
        assert 5 <= len(q.text.split()) <= 40 and q.passage.title == corpus[q.source].title
    kept = ict_queries(corpus, 30, seed=3, remove=0.0)
    assert all(q.passage == corpus[q.source] for q in kept)
    with pytest.raises(ValueError):
        ict_queries(corpus, 3, remove=1.5)


def test_generated_answers_are_cleaned_to_a_query():
    assert clean_query('Query: "effects of aspirin on stroke".\nMore text') == "effects of aspirin on stroke"
    assert clean_query("  \n\nsearch query - vitamin D deficiency") == "vitamin D deficiency"
    assert clean_query("") == ""
    assert usable_query("vitamin D deficiency") and not usable_query("A: 1) A: 2)")
    assert not usable_query("The passage describes a study") and not usable_query("aspirin")


def test_the_round_trip_filter_keeps_queries_that_find_their_source(scifact_corpus, scifact_bm25):
    a, b = sorted(scifact_corpus)[:2]
    found = PseudoQuery("gen-a", scifact_corpus[a].title, a, scifact_corpus[a], "generated")
    lost = PseudoQuery("gen-b", "zebra xylophone quartz", b, scifact_corpus[b], "generated")
    kept, dropped = round_trip_filter([found, lost], lambda qs: scifact_bm25.search(qs, k=10), k=10)
    assert kept == [found] and dropped == 1
    assert round_trip_filter([], None) == ([], 0)
