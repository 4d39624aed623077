"""ANLS, the DocVQA metric, and the normalized Levenshtein similarity of the Hugging Face Florence-2 DocVQA
fine-tune. Pure Python: no dependency beyond the standard library.

`anls` transcribes the official evaluation script of the Robust Reading Competition (rrc.cvc.uab.es/?ch=17,
docvqa.org; its InfographicVQA twin `infographicsVQA_eval.py`, `evaluate_method`), per question:

    gt_answer  = ' '.join(answer.strip().lower().split())
    det_answer = ' '.join(detObject['answer'].strip().lower().split())
    dist   = levenshtein_distance(gt_answer, det_answer)
    length = max(len(answer.upper()), len(detObject['answer'].upper()))
    values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    if question_result < anls_threshold: question_result = 0          # anls_threshold defaults to 0.5

Two details of the script are kept on purpose, so scores match the leaderboard's: the distance is taken between
the normalised strings but divided by the longer *raw* string (`.upper()` of the unnormalised text), and the cut
compares the similarity with the threshold (`1 - NL < tau` scores 0), so with tau = 0.5 a normalised distance of
exactly 0.5 still scores 0.5 (the paper's formula, NL < tau, would give 0 there; the two agree everywhere else).

`normalized_levenshtein_similarity` is `similarity_score` of andimarafioti/florence2-finetuning's metrics.py, the
code behind the blog post "Fine-tuning Florence-2" (its reported DocVQA "Levenshtein similarity" of 57.0):
case-sensitive, no whitespace normalisation, `1 - NL if NL < tau else 0`.
"""
from __future__ import annotations

from collections.abc import Iterable


def levenshtein_distance(s1: str, s2: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each), as the official script."""
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = list(range(len(s1) + 1))
    for i2, c2 in enumerate(s2):
        row = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                row.append(distances[i1])
            else:
                row.append(1 + min(distances[i1], distances[i1 + 1], row[-1]))
        distances = row
    return distances[-1]


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _answers(answers: str | Iterable[str]) -> list[str]:
    items = [answers] if isinstance(answers, str) else list(answers)
    if not items:
        raise ValueError("no ground-truth answers to score against")
    if not all(isinstance(a, str) for a in items):
        raise TypeError("answers must be strings")
    return items


def anls(prediction: str, answers: str | Iterable[str], tau: float = 0.5) -> float:
    """The ANLS score of one prediction against a question's ground-truth answers (0..1): the best
    1 - normalised Levenshtein distance over the answers, case-insensitive after stripping and collapsing
    whitespace, and 0 when that similarity is below `tau`. The dataset score is the mean over questions."""
    prediction = prediction or ""
    det = _normalise(prediction)
    values = []
    for answer in _answers(answers):
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else levenshtein_distance(_normalise(answer), det) / length)
    score = 1.0 - min(values)
    return 0.0 if score < tau else score


def normalized_levenshtein_similarity(prediction: str, answers: str | Iterable[str], tau: float = 0.5) -> float:
    """1 - distance / max(len) on the raw strings (case and blanks count), 0 when that normalised distance is
    `tau` or more; over several answers, the best. Two empty strings score 1 (the source divides by zero)."""
    prediction = prediction or ""
    best = 0.0
    for answer in _answers(answers):
        length = max(len(answer), len(prediction))
        nl = 0.0 if length == 0 else levenshtein_distance(answer, prediction) / length
        best = max(best, 1.0 - nl if nl < tau else 0.0)
    return best


def mean_anls(predictions: Iterable[str], answer_lists: Iterable[Iterable[str]], tau: float = 0.5) -> float:
    """ANLS over a set of questions: the mean of `anls` (0.0 for no questions, as the official script)."""
    scores = [anls(p, a, tau) for p, a in zip(predictions, answer_lists, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0
