"""The world's relevance model for texts (crops.world.judge): validated on catalogue videos,
whose intents are known, before it grades any synthesised text."""

from __future__ import annotations

import numpy as np
import pytest

from crops.world import taxonomy as tx
from crops.world.judge import TextJudge, video_text


@pytest.fixture(scope="module")
def judge(tiny_world) -> TextJudge:
    return TextJudge(tiny_world)


def test_the_judge_names_catalogue_videos_intents(judge) -> None:
    v = judge.validate(n=1500)
    assert v["videos"] == 1500 and v["no_known_word"] == 0
    assert v["topic_accuracy"] >= 0.95 and v["facet_accuracy"] >= 0.9, v
    assert v["relevant_agreement"] >= 0.95, v


def test_grades_match_the_truth_on_catalogue_videos(judge, tiny_world) -> None:
    """For each query form and a few catalogue videos, grade >= 2 agrees with the truth."""
    w = tiny_world
    rng = np.random.default_rng(3)
    agree = total = 0
    for f in rng.choice(len(w.forms), size=60, replace=False):
        q = w.forms.text[f]
        rows = rng.choice(len(w.videos), size=10, replace=False)
        truth = w.query_grades(q, w.videos.video_id[rows]) >= 2
        got = [judge.judge(q, video_text(w, int(r))).relevant for r in rows]
        agree += int((np.array(got) == truth).sum())
        total += len(rows)
    assert agree / total >= 0.95, agree / total


def _intent_of_topic(world, name: str, facet: int = 0) -> int:
    t = next(i for i, t in enumerate(tx.TOPICS) if t.name == name)
    return world.intent_of(t, facet)


def test_free_text_is_judged_by_its_words_plurals_included(judge, tiny_world) -> None:
    topic = tx.TOPICS[0]
    facet = topic.facets[0]
    want = _intent_of_topic(tiny_world, topic.name)
    text = f"Amazing {facet.words[0]}s and {facet.words[1]}ing with {topic.words[2]}s, LOL!"
    assert judge.intent(text) == want
    # a head query of that intent grades it 3 (same facet); of another topic 0 or 1
    f = tiny_world.forms.by_intent[(want, "head")]
    assert judge.judge(tiny_world.forms.text[f], text).grade == 3
    other = next(
        i
        for i in range(len(tiny_world.intents))
        if tiny_world.intents.domain[i] != tiny_world.intents.domain[want]
    )
    g = tiny_world.forms.by_intent[(other, "head")]
    assert judge.judge(tiny_world.forms.text[g], text).grade == 0


def test_text_with_no_world_word_is_not_relevant(judge, tiny_world) -> None:
    assert judge.intent("Fotosímás transportadores em o Brasil 2018") == -1
    v = judge.judge(tiny_world.forms.text[0], "zzz qqq")
    assert v.intent == -1 and v.grade == 0 and not v.relevant
    assert judge.judge("a query the world never made", "python loop").grade == 0
