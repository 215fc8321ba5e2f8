"""The built-in calibration sample (``pairs.jsonl``) the precision guard scores; see
:mod:`rerank.precision` and ``experiments/make_calibration.py`` for how it was made."""
