"""The speech filter: Markdown becomes spoken sentences; prices and bookings are guarded."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.call import speech as speech_module
from relay.call.speech import Emit, Speech, amounts_in, claims_booking, spoken_amount


def run(speech: Speech, tokens: list[str]) -> tuple[str, str | None]:
    sent: list[str] = []
    stop: str | None = None
    for token in tokens:
        emit = speech.feed(token)
        sent.append(emit.text)
        if emit.stop:
            stop = emit.stop
            break
    else:
        emit = speech.close()
        sent.append(emit.text)
        stop = emit.stop
    return "".join(sent), stop


def chars(text: str) -> list[str]:
    """A reply streamed in awkward pieces: three characters at a time."""
    return [text[i : i + 3] for i in range(0, len(text), 3)]


@pytest.mark.parametrize(
    ("reply", "heard"),
    [
        ("Hello there, how can I help?", "Hello there, how can I help?"),
        (
            "We offer:\n- **storage**\n- *moving*\n- tuning\n\nAnything else?",
            "We offer: storage, moving, tuning. Anything else?",
        ),
        (
            "## Our hours\nWe open at 8.\n1. Call us\n2. Book online",
            "Our hours. We open at 8. Call us, Book online",
        ),
        ("See [our prices](https://example.com/prices) page 🎹!", "See our prices page !"),
        ("Use `code` and ```\nprint(1)\n``` done", "Use code and done"),
        ("Line one\nline two", "Line one. line two"),
        ("## Hours\n- Monday\n- Tuesday", "Hours. Monday, Tuesday"),  # a heading is a sentence
    ],
)
def test_markdown_and_line_breaks_become_speech(reply: str, heard: str) -> None:
    for tokens in (re.findall(r"\s*\S+", reply), chars(reply), [reply]):
        speech = Speech(guard_prices=False, guard_bookings=False)
        text, stop = run(speech, tokens)
        assert stop is None
        assert text == heard
        assert speech.text == heard
        assert "\n" not in text and "*" not in text and "#" not in text


def test_holds_back_at_most_the_word_being_written() -> None:
    speech = Speech(guard_prices=False, guard_bookings=False)
    # The reply's first word is said as it is written: holding it for the next token would
    # add a token's time to every first frame.
    assert speech.feed("He") == Emit("He")
    assert speech.feed("llo") == Emit("llo")
    assert speech.feed(" the") == Emit("")
    assert speech.feed("re friend") == Emit(" there")
    assert speech.close() == Emit(" friend")
    assert speech.text == "Hello there friend"


@pytest.mark.parametrize("first", ["Six", "fi", "- ", "**", "1", "$", "A"])
def test_a_first_word_that_could_become_an_amount_or_markup_is_held(first: str) -> None:
    speech = Speech(allowed_amounts=set)
    assert speech.feed(first) == Emit("")


def test_a_long_reply_stops_at_the_sentence_end_after_the_limit() -> None:
    speech = Speech(max_words=5, guard_prices=False, guard_bookings=False)
    text, stop = run(speech, chars("One two three. Four five six seven. Eight nine ten."))
    assert (text, stop) == ("One two three. Four five six seven.", "limit")


def test_an_amount_a_tool_produced_is_said() -> None:
    speech = Speech(allowed_amounts=lambda: {Decimal("420.50")})
    text, stop = run(speech, chars("The total is $420.50 including GST."))
    assert (text, stop) == ("The total is $420.50 including GST.", None)
    speech = Speech(allowed_amounts=lambda: {Decimal("420.50")})
    text, stop = run(speech, chars("That's four hundred and twenty dollars and fifty cents."))
    assert stop is None and text.endswith("fifty cents.")


def test_an_invented_amount_is_never_heard() -> None:
    speech = Speech(allowed_amounts=lambda: {Decimal("420.50")})
    text, stop = run(
        speech, chars("The total price is six hundred and fifty dollars. Shall I book?")
    )
    assert stop == "price"
    assert text == "The total price is"
    assert speech.blocked == ["six hundred and fifty dollars."]
    speech = Speech(allowed_amounts=set)
    text, stop = run(speech, chars("It costs $650 to move."))
    assert (text, stop) == ("It costs", "price")


QUOTED = {Decimal(604), Decimal(350), Decimal(194), Decimal(60)}


@pytest.mark.parametrize(
    "reply",
    [
        "The total is $1,200: $350 for the piano, $194 for the distance and $60 for storage.",
        "The total is $999 and $194 of that is distance.",
        "The price is $1,500 and $60 for storage.",
        "The price is $2,000, $60 week for storage.",
        "That's $1,200, three hundred and fifty dollars for the piano.",
        "It's 1,200 dollars and 60 dollars for storage.",
    ],
)
def test_every_amount_of_a_run_is_checked_not_only_the_last(reply: str) -> None:
    """A tester's replies (a quote of $604: $350 + $194 + $60): an invented total before an
    amount the tool gave was said, since the run of held words was read as one amount."""
    for tokens in (re.findall(r"\s*\S+", reply), chars(reply)):
        speech = Speech(allowed_amounts=lambda: QUOTED)
        text, stop = run(speech, tokens)
        assert stop == "price", text
        assert "1,200" not in text and "999" not in text and "1,500" not in text
        assert "2,000" not in text


@pytest.mark.parametrize(
    ("reply"),
    [
        "The total is $604: $350 for the piano, $194 for the distance and $60 for storage.",
        "Storage is $60 a week in our warehouse.",
        "The total is $604 and that includes GST.",
        "That is 350 dollars and it includes GST.",
        "It costs $60 a fortnight less than that.",
        "That's six hundred and four dollars, $60 of it for storage.",
        "That's 604 dollars 0 cents.",
    ],
)
def test_amounts_a_tool_gave_are_said_with_the_word_after_them(reply: str) -> None:
    """A joiner after an amount ("a", "and") belongs to what follows: until 7 December it was
    dropped ("Storage is $60 week in our warehouse.")."""
    for tokens in (re.findall(r"\s*\S+", reply), chars(reply), [reply]):
        speech = Speech(allowed_amounts=lambda: QUOTED)
        assert run(speech, tokens) == (reply, None)


@pytest.mark.parametrize(
    ("sentence", "claim"),
    [
        ("Done, I have sent the quote to your mobile by text.", True),
        ("I've texted you the quote.", True),
        ("We've just emailed it to you.", True),
        ("I've just sent you the quote.", True),
        ("The quote has been sent to your mobile.", True),
        ("It's been sent to your phone.", True),
        ("I've sent you a text with the details.", True),
        ("I sent it by e-mail a minute ago.", True),
        ("Your text is on its way.", True),
        ("It's on its way to you now.", True),
        ("The e-mail has been sent.", True),
        ("It should arrive in a moment.", True),
        ("I\u2019ve texted the quote to you.", True),
        ("I'll text you the quote now.", False),
        ("Shall I send it to your mobile?", False),
        ("Would you like me to email it?", False),
        ("The text couldn't be sent just now.", False),
        ("The text has not been sent.", False),
        ("I've sent your message to the office, they'll call you back.", False),
        ("I've passed your details on to the team.", False),
        # A message taken for the team (take_message), in the words a tester's model used:
        # until late 7 December the guard cut them.
        ("Your message has been sent to the team.", False),
        ("I've messaged the office for you.", False),
        ("I've emailed the team your details.", False),
        ("Your message is on its way to the team.", False),
        ("It may or may not have gone through.", False),
        ("Our crew should arrive in the morning window.", False),
    ],
)
def test_claims_that_a_text_or_an_email_went(sentence: str, claim: bool) -> None:
    assert speech_module.claims_sent(sentence) is claim


def test_a_text_claim_needs_a_send() -> None:
    reply = "Done, I've texted you the quote. Anything else?"
    speech = Speech(sent=lambda: False)
    text, stop = run(speech, chars(reply))
    assert (text, stop) == ("Done, I've texted", "message")  # cut at "you": texted whom?
    assert speech.blocked == ["Done, I've texted you"]
    assert run(Speech(sent=lambda: True), chars(reply)) == (reply, None)
    assert run(Speech(sent=lambda: False, guard_messages=False), chars(reply)) == (reply, None)


def test_numbers_that_are_not_money_pass() -> None:
    speech = Speech(allowed_amounts=set)
    text, stop = run(speech, chars("We can move 2 pianos on the 24th with three movers and a van."))
    assert stop is None
    assert text == "We can move 2 pianos on the 24th with three movers and a van."


def test_a_booking_claim_needs_a_booking() -> None:
    speech = Speech(booked=lambda: False)
    text, stop = run(speech, chars("Great news. You're all booked for Tuesday."))
    assert (text, stop) == ("Great news. You're all", "booking")
    speech = Speech(booked=lambda: True)
    text, stop = run(speech, chars("Great news. You're all booked for Tuesday."))
    assert (text, stop) == ("Great news. You're all booked for Tuesday.", None)
    speech = Speech(booked=lambda: False)
    text, stop = run(speech, chars("Shall I book it for Tuesday? I'll book it once you confirm."))
    assert stop is None


@pytest.mark.parametrize(
    "sentence",
    [
        "I've booked your piano move",
        "Your booking is confirmed",
        "You are booked in for Monday",
        "That's all set for Friday",
        "We have scheduled the crew",
        "It\u2019s booked",
    ],
)
def test_claims(sentence: str) -> None:
    assert claims_booking(sentence)


@pytest.mark.parametrize(
    "sentence",
    ["Would you like me to book it?", "I'll book it now", "Booking takes a minute", "Let me check"],
)
def test_not_claims(sentence: str) -> None:
    assert not claims_booking(sentence)


def test_spoken_amounts() -> None:
    assert spoken_amount(["$1,234.50"]) == Decimal("1234.50")
    assert spoken_amount(["650", "dollars"]) == Decimal(650)
    assert spoken_amount(["twenty-five", "dollars"]) == Decimal(25)
    assert spoken_amount(["one", "thousand", "two", "hundred", "bucks"]) == Decimal(1200)
    assert spoken_amount(["3", "pianos"]) is None
    assert amounts_in("Total $420.50: base $300, stairs $120.50 and 15 dollars") == {
        Decimal("420.50"),
        Decimal(300),
        Decimal("120.50"),
        Decimal(15),
    }


# --- The fast paths give what the full passes give ----------------------------------------

_WORDISH = st.text(
    alphabet=st.sampled_from("abcXYZ019.,;:!?'\"()$%-/<>[]*_~`|#&+=@ \u2019\u00e9\u2022\U0001f600"),
    min_size=1,
    max_size=12,
)


@given(
    st.one_of(
        _WORDISH, st.sampled_from(["https://x.io", "<http://a.b>", "[text](url)", "**bold**"])
    )
)
@settings(max_examples=2000, deadline=None)
def test_a_word_without_markup_is_kept_as_it_is_only_when_the_full_pass_would_keep_it(
    word: str,
) -> None:
    assert speech_module._clean_word(word) == speech_module._strip_markup(word)


_CLAIM_VOCABULARY = [
    "you're", "You", "are", "we", "We've", "I", "i've", "just", "have", "has", "been", "is",
    "it's", "that's", "now", "all", "officially", "booked", "Booked.", "scheduled", "reserved,",
    "locked", "in", "in.", "confirmed!", "made", "the", "your", "a", "booking", "done", "set",
    "for", "Tuesday", "piano", "move", "bookedness", "format", "made-up", "(booked", "was", "were",
]  # fmt: skip


@given(st.lists(st.sampled_from(_CLAIM_VOCABULARY), min_size=1, max_size=9))
@settings(max_examples=3000, deadline=None)
def test_a_booking_claim_first_appears_with_a_word_the_guard_looks_at(words: list[str]) -> None:
    # Speech._say runs the (quadratic) claim check only for words that begin with a claim's
    # last word: exact only if no claim can first appear with any other word.
    for n in range(1, len(words) + 1):
        now = claims_booking(" ".join(words[:n]))
        before = n > 1 and claims_booking(" ".join(words[: n - 1]))
        if now and not before:
            assert words[n - 1].lower().startswith(speech_module._CLAIM_LAST_WORDS), words[:n]


@pytest.mark.parametrize(
    ("word", "numberish"),
    [
        ("twenty", True),
        ("Twenty-five,", True),
        ("twenty-five-hundred", False),  # "hundred" is a scale, not a number word
        ("Hundred.", True),
        ("dollars", True),
        ("AUD", True),
        ("grand", True),
        ("$420.50", True),
        ("1,200", True),
        ("5k", True),
        ("well-known", False),
        ("-", False),
        ("piano", False),
        ("", False),
        ('"', False),
    ],
)
def test_which_words_may_be_part_of_an_amount(word: str, numberish: bool) -> None:
    assert speech_module._numberish(word) is numberish


def test_a_word_said_alone_comes_back_as_its_own_emit_and_nothing_as_one_shared() -> None:
    speech = Speech()
    assert speech.feed("Hello") == Emit("Hello")  # the first word, said as it is written
    said = speech.feed(" there ")
    assert said == Emit(" there") and said.stop is None
    # nothing to say yet (a word still being written): the one shared empty Emit
    waiting = [speech.feed("pia"), speech.feed("no"), speech.feed("forte")]
    assert all(e == Emit() for e in waiting)
    assert len({id(e) for e in waiting}) == 1  # not a new one a token
    assert speech.feed(" now") == Emit(" pianoforte")


# --- Amounts from the business's documents ------------------------------------------------


def _statement(words: Sequence[str]) -> bool:
    return bool(words) and words[-1].lower().strip(".,") in ("is", "total")


def test_a_document_amount_is_said_unless_the_sentence_states_the_callers_price() -> None:
    documents = frozenset({Decimal(50_000)})
    speech = Speech(allowed_amounts=set, document_amounts=documents, price_statement=_statement)
    text, stop = run(speech, chars("Insurance covers up to $50,000 per piano."))
    assert (text, stop) == ("Insurance covers up to $50,000 per piano.", None)
    speech = Speech(allowed_amounts=set, document_amounts=documents, price_statement=_statement)
    text, stop = run(speech, chars("Insured, yes. The move is $50,000."))
    assert (text, stop) == ("Insured, yes. The move is", "price")
    assert speech.blocked == ["$50,000."]
    # A tool's amount may be the price; an agent without a price tool may say the documents'.
    speech = Speech(
        allowed_amounts=lambda: {Decimal(50_000)},
        document_amounts=documents,
        price_statement=_statement,
    )
    assert run(speech, chars("The move is $50,000.")) == ("The move is $50,000.", None)
    speech = Speech(allowed_amounts=set, document_amounts=documents)
    assert run(speech, chars("The move is $50,000.")) == ("The move is $50,000.", None)


# --- Chat-template tags -------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens",
    [
        [
            "<",
            "tool",
            "_response",
            ">\n",
            "The",
            " earliest",
            " free",
            " times",
            " are",
            " Wednesday.",
        ],
        ["<tool_response", ">", "\nThe earliest free times are Wednesday."],
        ["<|", "im", "_start", "|>", "The earliest free times are", " Wednesday.</", "tool_call>"],
        ["</tool", "_call> The earliest free times are Wednesday. <|im_end|>"],
    ],
)
def test_a_chat_template_tag_is_never_said_however_the_tokens_split_it(tokens: list[str]) -> None:
    speech = Speech(allowed_amounts=set)
    text, stop = run(speech, tokens)
    assert (text, stop) == ("The earliest free times are Wednesday.", None)
    assert speech.text == "The earliest free times are Wednesday."


def test_a_less_than_sign_in_speech_is_kept() -> None:
    speech = Speech(guard_prices=False, guard_bookings=False)
    reply = "It takes < 5 minutes, and <3 is a heart."
    assert run(speech, chars(reply)) == (reply, None)
