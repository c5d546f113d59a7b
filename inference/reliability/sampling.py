"""N sampled answers per attribute question, all questions in one engine call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.errors import XMedError
from inference.reliability.decomposition import AttributeQuestion
from inference.types import CancelFn, ChatRequest, Engine, Generation

log = logging.getLogger(__name__)

#: Wraps each attribute question: short answers make meaning clusters crisp.
ANSWER_INSTRUCTION = "Answer in a few words, without explanation."


@dataclass(frozen=True)
class SampledAnswer:
    text: str
    sum_logprob: float  # sequence log-likelihood
    mean_logprob: float  # length-normalised
    n_tokens: int
    finish_reason: str = "stop"

    @classmethod
    def from_generation(cls, g: Generation) -> "SampledAnswer":
        return cls(g.text.strip(), g.sum_logprob, g.mean_logprob, len(g.token_logprobs), g.finish_reason)


@dataclass(frozen=True)
class QuestionSamples:
    question: AttributeQuestion
    answers: tuple[SampledAnswer, ...]

    @property
    def texts(self) -> list[str]:
        return [a.text for a in self.answers]

    @property
    def cancelled(self) -> bool:
        return any(a.finish_reason == "cancelled" for a in self.answers)


def answer_request(question: AttributeQuestion, image: np.ndarray | None, system: str | None = None,
                   max_new_tokens: int = 48) -> ChatRequest:
    return ChatRequest(prompt=f"{question.question} {ANSWER_INSTRUCTION}", image=image, system=system,
                       max_new_tokens=max_new_tokens)


def sample_answers(
    engine: Engine,
    questions: Sequence[AttributeQuestion],
    image: np.ndarray | None,
    n: int = 10,
    temperature: float = 1.0,
    top_p: float = 0.9,
    system: str | None = None,
    max_new_tokens: int = 48,
    cancel: CancelFn | None = None,
) -> list[QuestionSamples]:
    """``n`` answers to every question from a single batched ``engine.sample`` call.

    The engine shares the image and prompt prefix across the ``n`` samples of a
    question (local: one prefill, KV cache repeated; remote: the API's ``n``).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not questions:
        return []
    requests = [answer_request(q, image, system, max_new_tokens) for q in questions]
    batches = sample_batch(engine, requests, n, temperature, top_p, cancel)
    return questions_from(questions, batches)


def questions_from(questions: Sequence[AttributeQuestion], batches: Sequence[Sequence[Generation]]
                   ) -> list[QuestionSamples]:
    return [
        QuestionSamples(q, tuple(SampledAnswer.from_generation(g) for g in batch))
        for q, batch in zip(questions, batches)
    ]


def sample_batch(
    engine: Engine,
    requests: Sequence[ChatRequest],
    n: int,
    temperature: float = 1.0,
    top_p: float = 0.9,
    cancel: CancelFn | None = None,
) -> list[list[Generation]]:
    """``n`` samples of every request in one ``engine.sample`` call, their number checked."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if not requests:
        return []
    batches = engine.sample(list(requests), n=n, temperature=temperature, top_p=top_p, cancel=cancel)
    if len(batches) != len(requests) or any(len(b) != n for b in batches):
        got = [len(b) for b in batches]
        raise XMedError(
            "The model returned an unexpected number of answers; reliability could not be assessed.",
            detail=f"asked {len(requests)} x {n}, got {got}",
        )
    return [list(b) for b in batches]
