"""transforms.anls against hand-computed values and against a transcription of the official DocVQA scorer."""
from __future__ import annotations

import random

import pytest
from groundforge.transforms.anls import (
    anls,
    levenshtein_distance,
    mean_anls,
    normalized_levenshtein_similarity,
)


def official_question_score(answers, prediction, threshold=0.5):
    """The per-question loop of the RRC DocVQA/InfographicVQA evaluation script (infographicsVQA_eval.py,
    `evaluate_method`, distributed at rrc.cvc.uab.es/?ch=17 and docvqa.org), transcribed line by line."""
    values = []
    for answer in answers:
        gt_answer = " ".join(answer.strip().lower().split())
        det_answer = " ".join(prediction.strip().lower().split())
        dist = levenshtein_distance(gt_answer, det_answer)
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    if question_result < threshold:
        question_result = 0
    return question_result


def florence2_finetune_similarity(a_ij, o_q_i, tau=0.5):
    """`similarity_score` of andimarafioti/florence2-finetuning metrics.py (the HF "Fine-tuning Florence-2" blog)."""
    len_s1, len_s2 = len(a_ij), len(o_q_i)
    nl = levenshtein_distance(a_ij, o_q_i) / max(len_s1, len_s2)
    return 1 - nl if nl < tau else 0


def test_levenshtein_distance_by_hand():
    assert levenshtein_distance("kitten", "sitting") == 3
    assert levenshtein_distance("sitting", "kitten") == 3
    assert levenshtein_distance("", "abc") == 3
    assert levenshtein_distance("abc", "") == 3
    assert levenshtein_distance("", "") == 0
    assert levenshtein_distance("flaw", "lawn") == 2
    assert levenshtein_distance("12/15/88", "12/15/89") == 1


def test_anls_hand_computed():
    # the three examples of huggingface/evaluate's metrics/anls/compute_score.py, scored by the official rule
    assert anls("Denver Broncos", ["Denver Broncos", "Denver R. Broncos"]) == 1.0
    assert anls("12/15/89", ["12/15/88"]) == pytest.approx(1 - 1 / 8)
    assert anls("Dear dr. Lobo", ["Dear Dr. Lobo", "Dr. Lobo"]) == 1.0  # case-insensitive
    # the best answer counts: "Room 4B" vs "room 4b" is exact; vs the long answer it would be far
    assert anls("room 4b", ["Room 4B, Winston-Salem", "Room 4B"]) == 1.0
    # blanks are stripped and collapsed before the distance...
    assert anls("  the   cat ", ["the cat"]) == 1.0
    # ...but the official script divides by the longer *raw* string: 1 edit over len("the  bat") = 8, not 7
    assert anls("the  bat", ["the cat"]) == pytest.approx(1 - 1 / 8)
    assert anls("", [""]) == 1.0
    assert anls("", ["x"]) == 0.0
    assert anls(None, ["x"]) == 0.0
    assert anls("165.00", "$165.00") == pytest.approx(1 - 1 / 7)  # one answer may be a plain string


def test_anls_tau_cut_off():
    # NL = 2/4 = 0.5: similarity 0.5 is not below tau = 0.5, so it is kept (the script's `< threshold`)
    assert anls("abcd", ["abxy"]) == pytest.approx(0.5)
    # NL = 3/5 = 0.6: similarity 0.4 < 0.5 -> 0
    assert anls("abcde", ["abxyz"]) == 0.0
    assert anls("abcd", ["axyz"]) == 0.0
    # tau moves the cut
    assert anls("abcd", ["abxy"], tau=0.6) == 0.0
    assert anls("abcde", ["abxyz"], tau=0.4) == pytest.approx(0.4)
    assert anls("abcde", ["abxyz"], tau=0.0) == pytest.approx(0.4)
    # one answer below the cut, another above: the best wins
    assert anls("abcd", ["wxyz", "abcx"]) == pytest.approx(0.75)


def test_anls_matches_official_script_on_random_strings():
    rng = random.Random(7)
    alphabet = "aAbB c1.-"
    for _ in range(400):
        answers = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 3))]
        prediction = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert anls(prediction, answers) == pytest.approx(official_question_score(answers, prediction)), (
            prediction, answers)


def test_normalized_levenshtein_similarity_as_florence2_finetune():
    assert normalized_levenshtein_similarity("Dear dr. Lobo", "Dear Dr. Lobo") == pytest.approx(12 / 13)  # case counts
    assert normalized_levenshtein_similarity("the  cat", "the cat") == pytest.approx(1 - 1 / 8)  # blanks count
    # strict cut: NL = 0.5 scores 0 here, 0.5 under ANLS
    assert normalized_levenshtein_similarity("abcd", "abxy") == 0.0
    assert anls("abcd", "abxy") == pytest.approx(0.5)
    assert normalized_levenshtein_similarity("abcde", "abcdx") == pytest.approx(0.8)
    assert normalized_levenshtein_similarity("abcde", ["zzzzz", "abcdx"]) == pytest.approx(0.8)
    assert normalized_levenshtein_similarity("", "") == 1.0
    rng = random.Random(3)
    for _ in range(200):
        a = "".join(rng.choice("abAB ") for _ in range(rng.randint(1, 7)))
        o = "".join(rng.choice("abAB ") for _ in range(rng.randint(1, 7)))
        assert normalized_levenshtein_similarity(o, a) == pytest.approx(florence2_finetune_similarity(a, o))


def test_mean_and_bad_answers():
    assert mean_anls(["12/15/89", "x"], [["12/15/88"], ["y"]]) == pytest.approx((1 - 1 / 8) / 2)
    assert mean_anls([], []) == 0.0
    with pytest.raises(ValueError):
        anls("x", [])
    with pytest.raises(TypeError):
        anls("x", [1])
    with pytest.raises(ValueError):
        mean_anls(["a"], [])


def test_eval_scores_vqa_records_with_anls_against_every_answer():
    import json

    from groundforge.train.metrics import score_records

    record = {"task": "vqa", "format": "florence2", "prompt": "<DocVQA>What is the total?", "target": "$165.00",
              "width": 100, "height": 100, "objects": [], "meta": json.dumps({"answers": ["$165.00", "165.00"]})}
    report = score_records([record, record, record], ["165.00", "$165.0", "nothing like it"])
    vqa = report["vqa"]
    assert vqa["n"] == 3 and vqa["exact_match"] == 1 / 3
    # exact second answer: 1; "$165.0" vs "$165.00": 1 - 1/7; the third is beyond tau: 0
    assert abs(vqa["anls"] - (1 + (1 - 1 / 7) + 0) / 3) < 1e-9
