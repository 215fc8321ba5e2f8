"""Experiments: pipelines compared on one dataset, with significance tests, latency, cost,
expected scores, and a written report (Markdown, CSV, TREC runs, PNG plots).

``rerank experiment experiments/<name>.toml`` runs a config; :class:`Experiment` is the Python
API. Modules: :mod:`~rerank.experiment.spec` (the TOML format and its checks),
:mod:`~rerank.experiment.shared` (computing parts shared by pipelines once),
:mod:`~rerank.experiment.runner` (running and evaluating), :mod:`~rerank.experiment.result`
(the table as data, and its report).
"""
from rerank.experiment.result import Drift, ExpectationError, ExperimentResult, PipelineRow
from rerank.experiment.runner import Experiment
from rerank.experiment.spec import Expectation, ExperimentSpec, load_spec

__all__ = ["Drift", "Expectation", "ExpectationError", "Experiment", "ExperimentResult", "ExperimentSpec",
           "PipelineRow", "load_spec"]
