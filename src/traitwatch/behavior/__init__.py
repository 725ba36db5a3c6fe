"""Behavioral EM evaluation: the expensive ground truth that the trait monitor is trained to predict.

Questions and judge prompts are package data (`load_questions`); generators (`TransformersGenerator`,
`OpenAIChatGenerator`) and judges (`OpenAIJudge`, or any callable) are configured values, and the server-backed
ones keep their settings in one validated `Endpoint`; `evaluate` is the one runner; `em_rate` is the pure
metric (METHOD.md section 5). `proxy_score` is a judge-free likelihood *proxy* for machines without a judge:
it is not an EM rate and is stored under its own source ("proxy").
"""

from __future__ import annotations

from traitwatch.behavior._http import EndpointError
from traitwatch.behavior.endpoint import Endpoint, EndpointSettingError, EndpointStats
from traitwatch.behavior.generation import (
    GenerationStats,
    Generator,
    OpenAIChatGenerator,
    TransformersGenerator,
    chat_messages,
)
from traitwatch.behavior.judge import Fallback, Judge, JudgeCache, JudgeStats, OpenAIJudge
from traitwatch.behavior.proxy import (
    PROXY_NOTE,
    ProxyAnswers,
    ProxyQuestionScore,
    ProxyResult,
    answer_logprobs,
    load_proxy_answers,
    proxy_answer_count,
    proxy_score,
)
from traitwatch.behavior.questions import (
    DEFAULT_QUESTION_FILES,
    SUPPORTED_TYPES,
    Question,
    load_questions,
    record_to_question,
)
from traitwatch.behavior.runner import AnswerRecord, EvalResult, evaluate
from traitwatch.behavior.scoring import (
    EMRate,
    JudgeScore,
    Judgement,
    Reason,
    aggregate_0_100,
    em_rate,
    judgement_from_scores,
    wilson_interval,
)

__all__ = [
    "DEFAULT_QUESTION_FILES",
    "SUPPORTED_TYPES",
    "AnswerRecord",
    "EMRate",
    "Endpoint",
    "EndpointError",
    "EndpointSettingError",
    "EndpointStats",
    "EvalResult",
    "Fallback",
    "GenerationStats",
    "Generator",
    "Judge",
    "JudgeCache",
    "JudgeScore",
    "JudgeStats",
    "Judgement",
    "OpenAIChatGenerator",
    "OpenAIJudge",
    "PROXY_NOTE",
    "ProxyAnswers",
    "ProxyQuestionScore",
    "ProxyResult",
    "Question",
    "Reason",
    "TransformersGenerator",
    "aggregate_0_100",
    "answer_logprobs",
    "chat_messages",
    "em_rate",
    "evaluate",
    "judgement_from_scores",
    "load_proxy_answers",
    "load_questions",
    "proxy_answer_count",
    "proxy_score",
    "record_to_question",
    "wilson_interval",
]
