"""Stop strings matched as text streams in: the answers of a search of the whole text."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine.stops import StopMatcher


def _stream(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    """The text released before the first stop (as the detokenizer releases it), and whether one was hit."""
    matcher, fed = StopMatcher(stops), ""
    for piece in pieces:
        start = matcher.feed(piece)
        if start is not None:
            return (fed + piece)[: len(fed) + start], True
        fed += piece
    return fed, False


def _reference(stops: list[str], text: str) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text("ab", min_size=1, max_size=4), min_size=1, max_size=4),
    st.lists(st.text("abc", max_size=3), max_size=12),
)
def test_streamed_matching_finds_the_stop_a_whole_text_search_finds(stops, pieces):
    text = "".join(pieces)
    released, hit = _stream(stops, pieces)
    expected, expected_hit = _reference(stops, text)
    assert hit == expected_hit
    if hit:
        # The stop that ends first is found; a longer one starting earlier but ending later may be missed,
        # as in vLLM (the text is cut at or before the earliest-ending stop's start).
        assert released.startswith(expected) and text[len(released) :].startswith(tuple(stops))
        assert not any(stop in released for stop in stops)
    else:
        assert released == text


def test_held_back_is_the_longest_tail_that_may_still_become_a_stop():
    matcher = StopMatcher(["hello", "help!"])
    assert matcher.feed("say hel") is None
    assert matcher.held == 3
    assert matcher.feed("lo") == -3
