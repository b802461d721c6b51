"""Rules of the simulator's topic taxonomy: the shipped data passes, broken copies fail clearly."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from crops.world.taxonomy import FILLER, POLYSEMOUS, TOPICS, Facet, Topic, check, stem


def _topic(taxonomy: tuple[Topic, ...], name: str) -> Topic:
    return next(t for t in taxonomy if t.name == name)


def _with_topic(taxonomy: tuple[Topic, ...], which: str, /, **changes: object) -> tuple[Topic, ...]:
    """A copy of the taxonomy with one topic's fields replaced."""
    assert any(t.name == which for t in taxonomy), which
    return tuple(dataclasses.replace(t, **changes) if t.name == which else t for t in taxonomy)


def _with_facet(
    taxonomy: tuple[Topic, ...], topic: str, facet: str, /, **changes: object
) -> tuple[Topic, ...]:
    """A copy of the taxonomy with one facet's fields replaced."""
    t = _topic(taxonomy, topic)
    assert any(f.name == facet for f in t.facets), facet
    facets = tuple(dataclasses.replace(f, **changes) if f.name == facet else f for f in t.facets)
    return _with_topic(taxonomy, topic, facets=facets)


def _facet(topic: str, facet: str) -> Facet:
    return next(f for f in _topic(TOPICS, topic).facets if f.name == facet)


def _all_words() -> list[str]:
    words: list[str] = []
    for t in TOPICS:
        words += [*t.words, *t.colloquial]
        for f in t.facets:
            words += [*f.words, *f.colloquial]
    return words


# --- the shipped data ---


def test_shipped_taxonomy_passes_check() -> None:
    check()
    check(TOPICS, polysemous=POLYSEMOUS, filler=FILLER)


def test_shipped_counts() -> None:
    assert len(TOPICS) == 24
    domains = Counter(t.domain for t in TOPICS)
    assert len(domains) == 8 and set(domains.values()) == {3}
    assert all(len(t.facets) == 5 for t in TOPICS)
    assert 25 <= len(FILLER) <= 40
    assert len(set(_all_words())) > 900


def test_required_polysemous_words() -> None:
    assert len(POLYSEMOUS) >= 8
    assert POLYSEMOUS["transformer"] == ("deep learning", "power grids")
    assert POLYSEMOUS["python"] == ("programming", "reptiles")
    for word, (dominant, minor) in POLYSEMOUS.items():
        assert word in _topic(TOPICS, dominant).words
        assert word in _topic(TOPICS, minor).words
        assert _topic(TOPICS, dominant).domain != _topic(TOPICS, minor).domain


def test_every_word_is_a_plain_token() -> None:
    for word in [*_all_words(), *FILLER]:
        assert re.fullmatch(r"[a-z]{3,14}", word), word


def test_colloquial_words_never_canonical() -> None:
    canonical = set()
    colloquial = set()
    for t in TOPICS:
        canonical |= set(t.words)
        colloquial |= set(t.colloquial)
        for f in t.facets:
            canonical |= set(f.words)
            colloquial |= set(f.colloquial)
    assert not canonical & colloquial
    assert not (canonical | colloquial) & set(FILLER)


def test_stem_merges_inflections() -> None:
    assert stem("baking") == stem("bakes") == stem("bake")
    assert stem("loops") == stem("looping") == stem("loop")
    assert stem("berries") == stem("berry")
    assert stem("bass") == "bass"


# --- broken copies ---


def test_word_duplicated_across_topics_fails() -> None:
    loop_facet = _facet("programming", "for loops")
    yoga = _facet("fitness", "yoga")
    broken = _with_facet(TOPICS, "fitness", "yoga", words=(*yoga.words[:-1], "iterate"))
    assert "iterate" in loop_facet.words
    with pytest.raises(ValueError, match="iterate"):
        check(broken)


def test_word_repeated_in_one_field_fails() -> None:
    t = _topic(TOPICS, "birds")
    broken = _with_topic(TOPICS, "birds", words=(*t.words[:-1], t.words[1]))
    with pytest.raises(ValueError, match=t.words[1]):
        check(broken)


def test_word_with_digit_fails() -> None:
    f = _facet("cars", "engines")
    broken = _with_facet(TOPICS, "cars", "engines", words=(*f.words[:-1], "v8engine"))
    with pytest.raises(ValueError, match="v8engine"):
        check(broken)


def test_word_with_uppercase_fails() -> None:
    t = _topic(TOPICS, "coffee")
    broken = _with_topic(TOPICS, "coffee", colloquial=(*t.colloquial[:-1], "Cuppa"))
    with pytest.raises(ValueError, match="Cuppa"):
        check(broken)


@pytest.mark.parametrize("word", ["ab", "abcdefghijklmno", "hot dog", "café"])
def test_word_bad_shape_fails(word: str) -> None:
    f = _facet("street food", "tacos")
    broken = _with_facet(TOPICS, "street food", "tacos", colloquial=(*f.colloquial, word))
    with pytest.raises(ValueError, match=re.escape(repr(word))):
        check(broken)


def test_stopword_fails() -> None:
    f = _facet("astronomy", "rockets")
    broken = _with_facet(TOPICS, "astronomy", "rockets", words=(*f.words[:-1], "the"))
    with pytest.raises(ValueError, match="'the'.*stopword"):
        check(broken)


def test_colloquial_equal_to_canonical_fails() -> None:
    f = _facet("programming", "for loops")
    broken = _with_facet(TOPICS, "programming", "for loops", colloquial=(*f.colloquial, "loop"))
    with pytest.raises(ValueError, match="'loop'.*canonical"):
        check(broken)


def test_colloquial_equal_to_other_topics_canonical_fails() -> None:
    t = _topic(TOPICS, "pets")
    broken = _with_topic(TOPICS, "pets", colloquial=(*t.colloquial[:-1], "guitar"))
    with pytest.raises(ValueError, match="'guitar'.*canonical"):
        check(broken)


def test_filler_word_in_taxonomy_fails() -> None:
    f = _facet("dance", "ballet")
    broken = _with_facet(TOPICS, "dance", "ballet", colloquial=(*f.colloquial, "tutorial"))
    with pytest.raises(ValueError, match="tutorial"):
        check(broken)
    with pytest.raises(ValueError, match="tutu"):
        check(filler=(*FILLER, "tutu"))


def test_shared_stem_fails() -> None:
    f = _facet("fitness", "yoga")
    broken = _with_facet(TOPICS, "fitness", "yoga", colloquial=(*f.colloquial, "looping"))
    with pytest.raises(ValueError, match="looping"):
        check(broken)


def test_polysemous_in_same_domain_fails() -> None:
    # Swap domains of gadgets and reptiles: python's two topics now both sit in "tech".
    broken = _with_topic(TOPICS, "reptiles", domain="tech")
    broken = _with_topic(broken, "gadgets", domain="nature")
    with pytest.raises(ValueError, match="'python'.*domain"):
        check(broken)


def test_polysemous_word_in_third_topic_fails() -> None:
    t = _topic(TOPICS, "astronomy")
    broken = _with_topic(TOPICS, "astronomy", words=(*t.words[:-1], "python"))
    with pytest.raises(ValueError, match="python"):
        check(broken)


def test_polysemous_word_missing_from_minor_topic_fails() -> None:
    t = _topic(TOPICS, "reptiles")
    words = tuple("sparewordx" if w == "python" else w for w in t.words)
    broken = _with_topic(TOPICS, "reptiles", words=words)
    with pytest.raises(ValueError, match="python"):
        check(broken)


def test_polysemous_word_in_colloquial_fails() -> None:
    t = _topic(TOPICS, "reptiles")
    broken = _with_topic(
        TOPICS,
        "reptiles",
        words=tuple("sparewordx" if w == "python" else w for w in t.words),
        colloquial=(*t.colloquial, "python"),
    )
    with pytest.raises(ValueError, match="python"):
        check(broken)


def test_too_few_polysemous_fails() -> None:
    kept = dict(list(POLYSEMOUS.items())[:7])
    broken = TOPICS
    # Give each dropped word's minor topic a fresh word instead, so only the count is wrong.
    for n, (word, (_, minor)) in enumerate(list(POLYSEMOUS.items())[7:]):
        t = _topic(broken, minor)
        spare = "spareword" + "abcdefghijklmnopqrstuvwxyz"[n]
        broken = _with_topic(broken, minor, words=tuple(spare if w == word else w for w in t.words))
    with pytest.raises(ValueError, match="only 7 polysemous"):
        check(broken, polysemous=kept)
    # Dropping a word from POLYSEMOUS alone leaves it with two undeclared homes.
    with pytest.raises(ValueError, match="homes"):
        check(polysemous=kept)


def test_polysemous_unknown_topic_fails() -> None:
    bad = {**POLYSEMOUS, "python": ("programming", "herpetology")}
    with pytest.raises(ValueError, match="herpetology"):
        check(polysemous=bad)


def test_topic_with_three_polysemous_words_fails() -> None:
    prog = _topic(TOPICS, "programming")
    broken = _with_topic(TOPICS, "programming", words=(*prog.words, "kitten"))
    bad = {**POLYSEMOUS, "kitten": ("pets", "programming")}
    with pytest.raises(ValueError, match="'programming'.*3 polysemous"):
        check(broken, polysemous=bad)
    with pytest.raises(ValueError, match="kitten"):
        check(broken)


def test_wrong_facet_count_fails() -> None:
    t = _topic(TOPICS, "chemistry")
    broken = _with_topic(TOPICS, "chemistry", facets=t.facets[:4])
    with pytest.raises(ValueError, match="chemistry.*4 facets"):
        check(broken)


def test_duplicate_facet_name_fails() -> None:
    t = _topic(TOPICS, "trucks")
    renamed = dataclasses.replace(t.facets[1], name=t.facets[0].name)
    broken = _with_topic(TOPICS, "trucks", facets=(t.facets[0], renamed, *t.facets[2:]))
    with pytest.raises(ValueError, match="monster trucks"):
        check(broken)


def test_domain_with_four_topics_fails() -> None:
    broken = _with_topic(TOPICS, "birds", domain="food")
    with pytest.raises(ValueError, match="domain"):
        check(broken)


def test_duplicate_topic_name_fails() -> None:
    broken = _with_topic(TOPICS, "trucks", name="cars")
    with pytest.raises(ValueError, match="'cars'"):
        check(broken)


def test_wrong_topic_count_fails() -> None:
    with pytest.raises(ValueError, match="23 topics"):
        check(TOPICS[:-1])


def test_field_size_limits_fail() -> None:
    f = _facet("gardening", "pruning")
    broken = _with_facet(TOPICS, "gardening", "pruning", words=f.words[:2])
    with pytest.raises(ValueError, match="pruning"):
        check(broken)
    t = _topic(TOPICS, "baking")
    broken = _with_topic(TOPICS, "baking", colloquial=(*t.colloquial, "noms", "delish"))
    with pytest.raises(ValueError, match="baking"):
        check(broken)
