"""LLM relevance judgments and how far to trust them.

:func:`judge_runs` pools runs and grades the pool with an LLM (``rerank judge``);
:func:`compare_judges` measures judges against human labels, per label and in the order they put
systems in (``rerank judge compare``). See ``docs/judging.md``.
"""
from rerank.judge.agreement import (
    LabelAgreement,
    SystemAgreement,
    combine,
    flip_grades,
    implied_kappa,
    label_agreement,
    system_agreement,
    tau_ap,
)
from rerank.judge.grade import JudgeReport, Judgment, JudgmentCache, LLMJudge, judgments_to_qrels, pool
from rerank.judge.prompts import PROMPTS, JudgePrompt, load_prompt
from rerank.judge.workflow import Comparison, compare_judges, fill_qrels, judge_runs

__all__ = ["PROMPTS", "Comparison", "JudgePrompt", "JudgeReport", "Judgment", "JudgmentCache", "LLMJudge",
           "LabelAgreement", "SystemAgreement", "combine", "compare_judges", "fill_qrels", "flip_grades",
           "implied_kappa", "judge_runs", "judgments_to_qrels", "label_agreement", "load_prompt", "pool",
           "system_agreement", "tau_ap"]
