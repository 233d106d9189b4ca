"""Parsing R1-Omni answers and scoring them (exact after synonyms; OV-MER set level)."""
from __future__ import annotations

import pytest

from clmer_fusion.r1omni.parse import parse_output
from clmer_fusion.r1omni.score import exact_scores, normalize_label, ov_groups, ov_scores, split_labels, synonyms


def test_parse_well_formed_and_broken_outputs():
    text = "<think>He frowns; the voice is loud.</think>\n<answer> Angry </answer>"
    assert parse_output(text) == ("He frowns; the voice is loud.", "Angry", True)
    assert parse_output("<answer>sad</answer>") == (None, "sad", False)
    assert parse_output("<think>hmm</think> surprised") == ("hmm", "surprised", False)
    assert parse_output("<think>unfinished") == (None, "unfinished", False)
    assert parse_output("") == (None, None, False)
    # answer before think is not the trained format
    assert parse_output("<answer>x</answer><think>y</think>")[2] is False


@pytest.mark.parametrize("raw,canon", [
    ("fearful", "fear"), ("Surprised.", "surprise"), ("joy", "happy"), ("HAPPINESS", "happy"),
    ("anger", "angry"), ("sadness", "sad"), ("disgusted", "disgust"), ("neu", "neutral"),
    ("worried, sad", "worried"), ("", ""), (None, ""), ("bemused", "bemused"),
])
def test_normalize_label(raw, canon):
    assert normalize_label(raw) == canon


def test_war_and_uar_numbers():
    golds = ["fear", "fear", "fear", "happy", "sad", None]
    preds = ["fearful", "scared", "happy", "joy", None, "sad"]
    s = exact_scores(golds, preds)
    assert s["n"] == 5 and s["correct"] == 3  # unlabelled row ignored, missing answer wrong
    assert s["war"] == pytest.approx(3 / 5)
    assert s["per_class_recall"] == {"fear": pytest.approx(2 / 3), "happy": 1.0, "sad": 0.0}
    assert s["uar"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert exact_scores([None], ["x"])["war"] is None


def test_open_vocabulary_set_level_scores():
    assert split_labels("Happy, excited and nervous / happy") == ["happy", "excited", "nervous"]
    assert split_labels("['worried', 'anxious']") == ["worried", "anxious"]  # OV-MERD's written form
    golds = ["happy, nervous", "angry", "sad, disappointed"]
    preds = ["joyful, anxious, surprised", "furious", None]
    s = ov_scores(golds, preds)
    # clip 1: pred groups {happy, worried, surprise} vs gold {happy, worried}: P 2/3, R 1
    # clip 2: {angry} vs {angry}: P 1, R 1 ; clip 3: nothing predicted: P 0, R 0
    p, r = (2 / 3 + 1 + 0) / 3, (1 + 1 + 0) / 3
    assert s["n"] == 3
    assert s["precision"] == pytest.approx(p) and s["recall"] == pytest.approx(r)
    assert s["f1"] == pytest.approx(2 * p * r / (p + r))


def test_tables_are_consistent():
    groups = ov_groups()
    syn = synonyms()
    # every canonical class name is a word the grouping table knows
    for canon in set(syn.values()) - {"positive", "negative"}:
        assert canon in groups, canon
    # synonyms never split what the grouping table joins: a word and its canonical name share a group
    for word, canon in syn.items():
        if word in groups and canon in groups:
            assert groups[word] == groups[canon] or canon in ("excited", "frustrated", "calm"), (word, canon)
