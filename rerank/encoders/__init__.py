"""Text to vectors, shared by the indexes (:mod:`rerank.retrieve`) and the scorers
(:mod:`rerank.score`), which both import them from below: :mod:`~rerank.encoders.dense`
(bi-encoders, one vector per text), :mod:`~rerank.encoders.sparse` (SPLADE, one weight per
vocabulary term) and :mod:`~rerank.encoders.tokens` (ColBERT, one vector per token, and MaxSim)."""
