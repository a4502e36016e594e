"""What is sent to Twilio is speech: a streaming filter between the model and the caller.

A model writes for a screen: Markdown lists, emphasis, headings, links, code, emoji, line breaks
and long paragraphs. ConversationRelay reads every character aloud. :class:`Speech` turns the
model's tokens into plain spoken sentences as they stream, holding back at most the word being
written (and, while an amount of money is being said, the words of that amount), and applies the
promises relay keeps whatever the model does:

- **length**: a reply stops at the first sentence end after ``max_words`` words;
- **prices**: an amount of money is spoken only when this call's tool results (or the passages
  retrieved from the business's own documents) produced it; otherwise the amount is not sent and
  the filter stops with ``"price"``, so the session can bridge ("let me work out the exact price")
  and ask the model again with the quote tool required. An amount only the documents give (an
  insurance limit) is not the caller's price: with ``price_statement``, a sentence that states a
  price ("the total is", "it'll be") may say only a tool's amount;
- **bookings**: a sentence that tells the caller a job is booked (``"you're all booked"``, ``"I've
  booked"``, ``"your booking is confirmed"``...) is cut before the claim unless a booking tool
  succeeded in this call; the filter stops with ``"booking"``;
- **messages**: a sentence that tells the caller a text or an e-mail went (``"I've texted you the
  quote"``, ``"I've sent it to your mobile"``, ``"it should arrive in a moment"``...) is cut at
  the claim unless a send tool succeeded in this call; the filter stops with ``"message"``.

The filter is pure (no I/O, no clock), so it is tested word by word and costs a few microseconds a
token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

__all__ = [
    "Emit",
    "Speech",
    "amounts_in",
    "claims_booking",
    "claims_sent",
    "spoken_amount",
]


@dataclass(frozen=True, slots=True)
class Emit:
    """What to send now (``text``, possibly empty) and why the reply must stop, if it must."""

    text: str = ""
    stop: str | None = None  # None | "limit" | "price" | "booking" | "message"


#: Nothing to send and no reason to stop: one shared instance (an Emit cannot change), since
#: most words of a reply produce it somewhere on their way through the filter.
_NOTHING = Emit()

_NUMBER_WORDS: dict[str, int] = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "grand": 1_000}
_CURRENCY = {"dollar", "dollars", "bucks", "aud", "usd", "cents", "cent"}
_JOINERS = {"and", "point", "a"}
_DIGITS = re.compile(r"^(?:[A-Z]{0,2}\$|\$)?\d[\d,]*(?:\.\d+)?[kK]?$")
_MONEY_IN_TEXT = re.compile(
    r"(?:\$\s?(\d[\d,]*(?:\.\d{1,2})?))|(\d[\d,]*(?:\.\d{1,2})?)\s?(?:dollars|AUD)\b"
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
_STRIP_EDGES = ".,;:!?\"'()[]{}\u201c\u201d\u2018\u2019"

# A claim that a job is booked, in the words a model uses. Promises ("I'll book that") and
# questions ("shall I book it?") are not claims; past and present perfect statements are.
_BOOKING_CLAIM = re.compile(
    r"\b(?:"
    r"(?:you'?re|you are|we'?re|we are|it'?s|it is|that'?s|that is|is|are|has been|have been|"
    r"was|were)\s+(?:now\s+|all\s+|officially\s+)*(?:booked|scheduled|reserved|locked\s+in|confirmed)"
    r"|(?:i|we)\s*(?:'ve|have|just|'ve just|have just)\s+(?:booked|scheduled|reserved|locked|"
    r"confirmed|made\s+(?:the|your|a)\s+booking)"
    r"|(?:i|we)\s+(?:booked|scheduled|reserved)\b"
    r"|booking\s+(?:is|has\s+been)\s+(?:confirmed|made|done|set|locked)"
    r"|all\s+booked|all\s+set\s+for"
    r")",
    re.IGNORECASE,
)


#: Every claim _BOOKING_CLAIM finds ends with one of these words, each after a space: a claim
#: can thus only appear when a word beginning with one of them is added to the sentence.
_CLAIM_LAST_WORDS = (
    "booked", "scheduled", "reserved", "in", "confirmed", "locked", "booking", "made", "done",
    "set", "for",
)  # fmt: skip
_SPACES = re.compile(r"(\s+)")


# A claim that a text or an e-mail went to the caller. Only statements that it went to the
# caller are claims: "I've texted you the quote", "I've sent you a text", "I've just sent you the
# quote", "I've sent it to your mobile", "the quote has been sent", "your text is on its way",
# "it's been sent to your phone", "it should arrive shortly". Promises ("I'll text it") and
# questions ("shall I send it?") use other words, "it couldn't be sent" and "the text has not
# been sent" do not match, and a message passed on to the team ("your message has been sent to
# the office", "I've messaged the office", "I've emailed the team your details") names no
# channel of the caller's and is no claim.
_CHANNEL = r"(?:texts?|sms|e-?mails?)"
_YOURS = r"(?:you\b|your\s+(?:mobile|phone|cell|inbox|e-?mail))"
_SENT_CLAIM = re.compile(
    r"\b(?:"
    r"(?:i|we)\s*(?:'ve|have)?\s*(?:just\s+|now\s+|already\s+)?(?:texted|e-?mailed|messaged)"
    r"\s+(?:(?:it|that|them|the\s+\w+)\s+)?(?:to\s+)?"
    + _YOURS
    + r"|(?:i|we)\s*(?:'ve|have)?\s*(?:just\s+|now\s+|already\s+)?sent\b(?:"
    r"\s+(?:(?:it|that|them|the\s+\w+)\s+)?(?:to\s+)?"
    + _YOURS
    + r"|[^.!?]{0,60}?\b(?:by|via|as\s+an?|in\s+an?)\s+"
    + _CHANNEL
    + r"\b"
    r"|[^.!?]{0,60}?\bto\s+your\s+(?:mobile|phone|cell|inbox|e-?mail))"
    r"|(?:" + _CHANNEL + r"|quote)\s+(?:is|has\s+been|was)\s+(?:now\s+|just\s+|already\s+)?"
    r"(?:sent|on\s+its\s+way|gone(?:\s+through)?)"
    r"|it(?:'s|\s+is|\s+has|\s+was)\s+(?:been\s+)?(?:now\s+|just\s+)?(?:sent|on\s+its\s+way)"
    r"\b[^.!?]{0,30}?\b(?:to\s+)?"
    + _YOURS
    + r"|(?:it|text|sms|e-?mail|quote)\s+should\s+(?:arrive|come\s+through|be\s+with\s+you)"
    r")",
    re.IGNORECASE,
)
#: Every claim _SENT_CLAIM finds ends with a word beginning with one of these: checked only then.
_SENT_LAST_WORDS = (
    "texted", "emailed", "e-mailed", "messaged", "text", "sms", "email", "e-mail", "message",
    "mobile", "phone", "cell", "inbox", "sent", "way", "gone", "through", "arrive", "you",
)  # fmt: skip


def claims_sent(sentence: str) -> bool:
    """Whether ``sentence`` tells the caller that a text or an e-mail was sent to them."""
    return _SENT_CLAIM.search(sentence.replace("\u2019", "'")) is not None


def claims_booking(sentence: str) -> bool:
    """Whether ``sentence`` tells the caller that something is booked."""
    return _BOOKING_CLAIM.search(sentence.replace("\u2019", "'")) is not None


def amounts_in(text: str) -> set[Decimal]:
    """Every amount of money written in ``text`` (``$420.50``, ``$1,234``, ``650 dollars``)."""
    found: set[Decimal] = set()
    for match in _MONEY_IN_TEXT.finditer(text):
        raw = (match.group(1) or match.group(2)).replace(",", "")
        try:
            found.add(Decimal(raw))
        except InvalidOperation:
            continue
    return found


def spoken_amount(words: Iterable[str]) -> Decimal | None:
    """The amount of money in a phrase as spoken or written, or None if it names no money.

    ``["$420.50"]`` → 420.50; ``["four", "hundred", "and", "twenty", "dollars", "and", "fifty",
    "cents"]`` → 420.50; ``["650", "dollars"]`` → 650; ``["3", "pianos"]`` → None.
    """
    tokens = [w.strip(_STRIP_EDGES).lower() for w in words]
    tokens = [t for t in tokens if t]
    money = any("$" in t for t in tokens) or any(t in _CURRENCY for t in tokens)
    if not money:
        return None
    dollars: Decimal | None = None
    cents = Decimal(0)
    current = 0
    total = 0
    seen_words = False
    after_dollars = False
    for token in tokens:
        bare = token.split("$")[-1].replace(",", "")
        if token in ("dollar", "dollars", "bucks", "aud", "usd"):
            if seen_words:
                dollars = Decimal(total + current)
                total = current = 0
                seen_words = False
            after_dollars = True
            continue
        if token in ("cents", "cent"):
            if seen_words:
                cents = Decimal(total + current) / 100
                total = current = 0
                seen_words = False
            continue
        if bare and _DIGITS.match(bare):
            value = bare[:-1] if bare[-1] in "kK" else bare
            try:
                number = Decimal(value)
            except InvalidOperation:
                return None
            if bare[-1] in "kK":
                number *= 1000
            if after_dollars:
                cents = number / 100
            else:
                dollars = number
            continue
        for part in token.split("-"):
            if part in _NUMBER_WORDS:
                current += _NUMBER_WORDS[part]
                seen_words = True
            elif part == "hundred":
                current = max(current, 1) * 100
                seen_words = True
            elif part in _SCALES:
                total += max(current, 1) * _SCALES[part]
                current = 0
                seen_words = True
    if seen_words:
        if dollars is None and not after_dollars:
            dollars = Decimal(total + current)
        else:
            cents = Decimal(total + current) / 100
    if dollars is None:
        return cents if cents else None
    return dollars + cents


def _amount_phrases(words: list[str]) -> list[list[str]]:
    """A run of held words cut into the amounts it says, each checked on its own: "$1,200:
    $350 for the piano" holds two amounts, and until 7 December only the last was checked, so
    an invented total before a tool's amount was said. A new amount starts:

    - at a word with ``$`` once the amount so far has a number ("six hundred dollars, $60");
    - at a written number once the amount so far has one, unless it is the cents right after
      "dollars" ("420 dollars 50"): "1,200 dollars and 60 dollars";
    - after a word ending in ``,``, ``;`` or ``:`` once the amount so far names money or has a
      written number ("$1,200, three hundred dollars"); "four hundred, and twenty dollars"
      stays one.
    """
    phrases: list[list[str]] = [[]]
    number = written = money = False  # what the current phrase has so far
    for word in words:
        bare = word.strip(_STRIP_EDGES).lower()
        sign = "$" in bare
        digits = bool(bare) and (sign or _DIGITS.match(bare) is not None)
        current = phrases[-1]
        if current:
            last = current[-1]
            cents = last.strip(_STRIP_EDGES).lower() in ("dollar", "dollars")
            if (
                (sign and number)
                or (digits and written and not cents)
                or (last[-1:] in ",;:" and (money or written))
            ):
                phrases.append([])
                number = written = money = False
        phrases[-1].append(word)
        written = written or digits
        money = money or sign or bare in _CURRENCY
        number = number or digits or (_numberish(word) and bare not in _CURRENCY)
    return [phrase for phrase in phrases if phrase]


#: A word that alone is (part of) an amount: a number word, a scale or a currency.
_AMOUNT_WORDS = frozenset(_NUMBER_WORDS) | _CURRENCY | frozenset(_SCALES)


def _numberish(token: str) -> bool:
    bare = token.strip(_STRIP_EDGES).lower()
    if not bare:
        return False
    if bare in _AMOUNT_WORDS or "$" in bare or _DIGITS.match(bare):
        return True
    if "-" not in bare:
        return False
    return all(part in _NUMBER_WORDS for part in bare.split("-"))


def _is_emoji(char: str) -> bool:
    if char in "\u200d\ufe0f\ufe0e\u20e3":
        return True
    code = ord(char)
    if 0x1F000 <= code <= 0x1FAFF or 0x2600 <= code <= 0x27BF or 0x1F900 <= code <= 0x1F9FF:
        return True
    return unicodedata.category(char) == "So"


_EARLY = re.compile(r"[A-Za-z][A-Za-z']*")
_NUMBERISH_WORDS = (*_NUMBER_WORDS, *_SCALES, *_CURRENCY)
_LINK_TAIL = re.compile(r"\]\([^)\s]*\)?")
_LIST_MARKER = re.compile("^(?:[-*+\u2022\u2013\u2014]|\\d{1,2}[.)]|[a-zA-Z][.)])$")
_HEADING = re.compile(r"^#{1,6}$")
_URL_SCHEME = re.compile(r"^<?https?://", re.IGNORECASE)


#: A character _clean_word may change, or a URL's start: a plain ASCII word without any is
#: returned as it is (most words of most replies), without the passes below.
_MARKUP = re.compile(r"[\[\]*_~`|<>]|^<?https?://", re.IGNORECASE)
#: A chat template's tag (``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``<|im_end|>``)
#: that a small model echoes as text: never speech. One without its ``>`` is a whole word only
#: (the stream ended in it); "<" before anything else ("< 5", "<3") is kept.
_TAG = re.compile(r"<[/|]?[a-z_|]+>", re.IGNORECASE)
_OPEN_TAG = re.compile(r"<[/|]?[a-z_|]+", re.IGNORECASE)


def _clean_word(word: str) -> str:
    """One word with its Markdown and emoji removed (links keep their text)."""
    if word.isascii() and _MARKUP.search(word) is None:
        return word  # no emoji is ASCII, and nothing _strip_markup looks for is there
    return _strip_markup(word)


def _strip_markup(word: str) -> str:
    word = _TAG.sub("", word)
    if _OPEN_TAG.fullmatch(word):
        return ""
    word = _LINK_TAIL.sub("", word)
    word = _URL_SCHEME.sub("", word).rstrip(">")
    word = "".join(ch for ch in word if not _is_emoji(ch))
    word = word.replace("**", "").replace("__", "").replace("~~", "").replace("`", "")
    word = word.replace("*", "").replace("|", "").lstrip("[").replace("]", "")
    if word.startswith("_") or word.endswith("_"):
        word = word.strip("_")
    return word


def _among(amount: Decimal, allowed: Iterable[Decimal]) -> bool:
    for known in allowed:
        if abs(known - amount) < Decimal("0.01"):
            return True
        if amount == amount.to_integral_value() and abs(known - amount) < 1:
            return True  # "four hundred and twenty dollars" for $420.50
    return False


@dataclass
class Speech:
    """A streaming Markdown-to-speech filter with the price, booking and length guards.

    ``allowed_amounts`` and ``booked`` are read when an amount or a claim is met, so they see
    tool results that arrive during the call. ``document_amounts``: the amounts in the passages
    retrieved for this turn, and ``searched_amounts`` those a search of the documents returned
    during the call; said anywhere, unless ``price_statement`` (given the words of the
    sentence before an amount) says the sentence states the caller's price: then only an
    amount in ``allowed_amounts`` is.
    """

    max_words: int | None = None
    allowed_amounts: Callable[[], set[Decimal]] = field(default=lambda: set())
    document_amounts: frozenset[Decimal] = frozenset()
    searched_amounts: Callable[[], set[Decimal]] = field(default=lambda: set())
    price_statement: Callable[[Sequence[str]], bool] | None = None
    booked: Callable[[], bool] = field(default=lambda: True)
    sent: Callable[[], bool] = field(default=lambda: True)
    guard_prices: bool = True
    guard_bookings: bool = True
    guard_messages: bool = True

    def __post_init__(self) -> None:
        self._raw = ""
        self._said: list[str] = []  # what has been emitted, word by word
        self._sentence: list[str] = []  # the words of the sentence being said
        self._held: list[str] = []  # an amount being said, held until it is complete
        self._line_start = True
        self._pending_break = False
        self._in_code = False
        self._skip_break = False
        self._words = 0
        self._heading = False  # the line being said is a heading: it ends as a sentence
        self._early = ""  # the start of the reply's first word, said before the word ended
        self._stopped: str | None = None
        self.blocked: list[str] = []  # what the guards kept from the caller

    @property
    def text(self) -> str:
        """Everything emitted so far: what the caller hears."""
        return " ".join(self._said)

    @property
    def stopped(self) -> str | None:
        return self._stopped

    def feed(self, token: str) -> Emit:
        if self._stopped:
            return Emit(stop=self._stopped)
        self._raw += token
        pieces = _SPACES.split(self._raw)
        # The last piece is a word still being written unless the buffer ends with space.
        self._raw = "" if pieces[-1] == "" else pieces.pop()
        out = self._process(pieces)
        if out.stop or self._said or self._held or self._in_code:
            return out
        return Emit(out.text + self._say_early())

    def _say_early(self) -> str:
        """The reply's first word, as far as it is written, when nothing could change it.

        Holding the first word until the next token shows that it ended would add a token's
        time to every reply's first frame. Plain letters that cannot begin a number, an amount
        or a Markdown marker are safe to say at once; no booking claim is one word long.
        """
        tail = self._raw
        if len(tail) < 2 or _EARLY.fullmatch(tail) is None or len(tail) <= len(self._early):
            return ""
        lowered = tail.lower()
        if any(word.startswith(lowered) for word in _NUMBERISH_WORDS):
            return ""
        said, self._early = tail[len(self._early) :], tail
        return said

    def close(self) -> Emit:
        """The stream ended: say what is held, if it may be said."""
        if self._stopped:
            return Emit(stop=self._stopped)
        pieces = [self._raw]
        self._raw = ""
        out = self._process(pieces)
        if self._stopped:
            return out
        tail = self._release_held(final=True)
        return Emit(out.text + tail.text, tail.stop)

    # -- internals ---------------------------------------------------------------------------

    def _process(self, pieces: list[str]) -> Emit:
        out: list[str] = []
        emitted = _NOTHING
        for piece in pieces:
            if not piece:
                continue
            if piece.isspace():
                if "\n" in piece and (self._in_code or self._skip_break):
                    self._skip_break = False
                    self._line_start = True
                    continue
                if "\n" in piece:
                    if self._held:
                        released = self._release_held(final=True)
                        out.append(released.text)
                        if released.stop:
                            return Emit("".join(out), released.stop)
                    self._line_start = True
                    self._pending_break = True
                continue
            emitted = self._word(piece)
            out.append(emitted.text)
            if emitted.stop:
                return Emit("".join(out), emitted.stop)
        if not out:
            return _NOTHING  # a token that only continues a word
        if len(out) == 1 and out[0] is emitted.text:
            return emitted  # one word said, nothing else (most tokens): its Emit as it is
        return Emit("".join(out))

    def _word(self, raw: str) -> Emit:
        if raw.startswith("```"):
            # A code block is not read out; the text around it reads as one sentence.
            self._in_code = not self._in_code
            self._pending_break = False
            self._skip_break = not self._in_code
            return _NOTHING
        if self._in_code:
            return _NOTHING
        prefix = ""
        if self._line_start:
            self._line_start = False
            if _LIST_MARKER.match(raw) or _HEADING.match(raw) or raw == ">":
                self._line_start = True  # the item's first word is still to come
                if self._pending_break:
                    self._pending_break = False
                    prefix = self._break_punctuation(list_item=not _HEADING.match(raw))
                self._heading = bool(_HEADING.match(raw))
                return self._emit_prefix(prefix)
            raw = raw.lstrip("#>")
            if self._pending_break:
                self._pending_break = False
                prefix = self._break_punctuation(list_item=False)
        word = _clean_word(raw)
        if not word:
            return self._emit_prefix(prefix)
        if self.guard_prices and (_numberish(word) or (self._held and word.lower() in _JOINERS)):
            if prefix:
                self._said_append_punctuation(prefix)
            self._held.append(word)
            if _SENTENCE_END.search(word):
                return self._with_prefix(prefix, self._release_held(final=True))
            return Emit(self._render_prefix(prefix))
        if not self._held:
            return self._say(word, prefix)
        released = self._release_held(final=False)
        if released.stop:
            return released
        said = self._say(word, prefix)
        return Emit(released.text + said.text, said.stop)

    def _emit_prefix(self, prefix: str) -> Emit:
        if prefix:
            self._said_append_punctuation(prefix)
            return Emit(self._render_prefix(prefix))
        return _NOTHING

    def _with_prefix(self, prefix: str, emit: Emit) -> Emit:
        return Emit(self._render_prefix(prefix) + emit.text, emit.stop)

    def _render_prefix(self, prefix: str) -> str:
        return prefix

    def _said_append_punctuation(self, mark: str) -> None:
        if self._said:
            self._said[-1] += mark.strip()

    def _break_punctuation(self, *, list_item: bool) -> str:
        heading, self._heading = self._heading, False
        if not self._said or _SENTENCE_END.search(self._said[-1]) or self._said[-1][-1] in ",;:":
            return ""
        if list_item and not heading:
            return ","
        self._sentence = []
        return "."

    def _release_held(self, *, final: bool) -> Emit:
        """The amounts being held are complete: say them if a tool produced each of them."""
        held, self._held = self._held, []
        joiners: list[str] = []
        while held and held[-1].lower().strip(_STRIP_EDGES) in _JOINERS:
            # "$60 a week", "$604 and that": the joiner belongs to what follows, and is said
            # after the amount (until 7 December it was dropped)
            joiners.insert(0, held.pop())
        for phrase in _amount_phrases(held):
            amount = spoken_amount(phrase)
            if amount is not None and not self._amount_allowed(amount):
                self.blocked.append(" ".join(held))
                self._stopped = "price"
                return Emit(stop="price")
        out: list[str] = []
        for word in [*held, *joiners]:
            said = self._say(word, "")
            out.append(said.text)
            if said.stop:
                return Emit("".join(out), said.stop)
        return Emit("".join(out))

    def _amount_allowed(self, amount: Decimal) -> bool:
        if _among(amount, self.allowed_amounts()):
            return True
        if not (_among(amount, self.document_amounts) or _among(amount, self.searched_amounts())):
            return False
        # The documents' amounts are facts about the business (a cover limit), not a price
        # for the caller's job: only a tool works that out.
        return self.price_statement is None or not self.price_statement(self._sentence)

    def _say(self, word: str, prefix: str) -> Emit:
        # A claim can only end with this word if the word starts with a claim's last word.
        if self.guard_bookings and word.lower().startswith(_CLAIM_LAST_WORDS):
            sentence = " ".join([*self._sentence, word])
            if claims_booking(sentence) and not self.booked():
                self.blocked.append(sentence)
                self._stopped = "booking"
                return Emit(stop="booking")
        if self.guard_messages and word.lower().startswith(_SENT_LAST_WORDS):
            sentence = " ".join([*self._sentence, word])
            if claims_sent(sentence) and not self.sent():
                self.blocked.append(sentence)
                self._stopped = "message"
                return Emit(stop="message")
        if prefix:
            self._said_append_punctuation(prefix)
        text = (prefix if prefix else "") + (" " if self._said else "") + word
        if self._early:
            early, self._early = self._early, ""
            if word.startswith(early):
                text = word[len(early) :]  # its start was said before the word ended
        self._said.append(word)
        self._sentence.append(word)
        self._words += 1
        if _SENTENCE_END.search(word):
            self._sentence = []
            if self.max_words is not None and self._words >= self.max_words:
                self._stopped = "limit"
                return Emit(text, "limit")
        elif self.max_words is not None and self._words >= self.max_words * 2:
            self._said[-1] += "."
            self._stopped = "limit"
            return Emit(text + ".", "limit")
        return Emit(text)
