"""Lexical guards: what two prompts must share before one's answer may serve the other.

Embeddings cannot see that "convert 100 F to C" and "convert 100 C to F" (cosine
0.991 with MiniLM) or "enable 2FA" and "disable 2FA" (0.908) ask different
things, and every public semantic cache has shipped false hits of this kind. So
a hit above the threshold still needs the two prompts to agree on:

* ``numbers``: the digits and number words, in order;
* ``negation``: negation words and contractions (not, no, never, without, don't ...);
* ``polarity``: words that have an opposite (enable/disable, ascending/descending,
  before/after, min/max ...; of a pair whose one side is too common to list, like
  on/off, the rarer side: "turn on" / "turn off" differ by "off");
* ``quoted``: quoted and back-ticked spans, exactly, in order;
* ``units``: units and currencies, in order (F/C, km/miles, USD/EUR ...);
* ``direction``: the word after each to / from / into / than / vs, in order;
* ``time``: time words (today, tomorrow, now, latest, current ...);
* ``script``: the writing systems used (a question in another language).

Every guard errs toward a miss: a lost paraphrase costs an upstream call, a false
hit a wrong answer. Prompts with code, a URL or a code fence never take part
(:func:`unsuitable`): the exact cache handles them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d|`([^`]+)`|(?<!\w)\'([^\']+)\'(?!\w)')
_SYMBOL_UNITS = re.compile(r"[°%$€£¥₹]")
_URL = re.compile(r"(?i)\b(?:https?|ftp)://|\bwww\.\w")
_CODE_LINE = re.compile(r"(?m)[{};]\s*$|^\s*(?:def|class|import|from|#include|function|SELECT"
                        r"|public|private)\b.*[:({]")

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


NUMBER_WORDS = _words("""
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion trillion dozen half quarter double triple twice
    once first second third fourth fifth sixth seventh eighth ninth tenth
""")

NEGATIONS = _words("""
    not no never none nothing nobody nowhere neither nor without cannot cant dont doesnt didnt
    isnt arent wasnt werent wont wouldnt shouldnt couldnt mustnt havent hasnt hadnt except
    excluding exclude instead avoid unless
""")

POLARITY = _words("""
    enable enabled enabling disable disabled disabling allow allowed deny denied disallow
    block unblock blocked add remove delete include exclude increase decrease raise lower
    ascending descending asc desc min max minimum maximum largest smallest biggest highest
    lowest most least more less fewer before after above below under upper lowercase uppercase
    encrypt decrypt encode decode compress decompress import export install uninstall start
    stop open close off true false yes input output push pull send receive buy sell left right
    down forward backward first last lock unlock show hide connect disconnect subscribe
    unsubscribe activate deactivate valid invalid positive negative plus minus inner outer
    public private sync async synchronous asynchronous increment decrement expand collapse
    join split merge better worse best worst faster slower cheaper win lose success failure
    pros cons advantages disadvantages
""")

UNITS = _words("""
    c f k celsius fahrenheit kelvin degree degrees mm cm m km inch inches ft feet foot yd yard
    yards mi mile miles nm mg g kg lb lbs oz ounce ounces pound pounds ton tons tonne tonnes
    stone ml l liter liters litre litres gallon gallons gal cup cups pint pints quart quarts
    tbsp tsp ms sec secs s min mins h hr hrs hour hours day days week weeks month months year
    years b kb mb gb tb pb kib mib gib tib bit bits byte bytes hz khz mhz ghz w kw mw kwh v mv
    ma mah mph kph kmh knots usd eur gbp jpy cny inr chf cad aud dollar dollars euro euros
    yen yuan rupee rupees cent cents percent bitcoin btc eth
""")

DIRECTION_MARKERS = _words("""
    to into from than vs versus toward towards onto
""")

TIME_WORDS = _words("""
    today tonight tomorrow yesterday now currently current latest recent recently newest
    upcoming next previous past future ago soon later morning afternoon evening night weekend
    monday tuesday wednesday thursday friday saturday sunday january february march april june
    july august september october november december
""")


@dataclass(frozen=True, slots=True)
class Features:
    """What the guards compare, read once from a prompt."""

    numbers: tuple[str, ...]
    negation: frozenset[str]
    polarity: frozenset[str]
    quoted: tuple[str, ...]
    units: tuple[str, ...]
    direction: tuple[str, ...]
    time: frozenset[str]
    script: frozenset[str]


def features(text: str) -> Features:
    text = text.translate(_APOSTROPHES)
    lowered = text.lower()
    words = _WORD.findall(lowered)
    plain = [w.replace("'", "") for w in words]
    numbers = [n.replace(",", "") for n in _NUMBER.findall(text)]
    numbers += [w for w in plain if w in NUMBER_WORDS]
    negation = {w for w in plain if w in NEGATIONS}
    negation |= {"n't" for w in words if w.endswith("n't")}
    units = [w for w in plain if w in UNITS] + _SYMBOL_UNITS.findall(text)
    direction = [plain[i + 1] if i + 1 < len(plain) else "" for i, w in enumerate(plain)
                 if w in DIRECTION_MARKERS]
    quoted = tuple(next(g for g in m.groups() if g is not None).strip()
                   for m in _QUOTED.finditer(text))
    script = {unicodedata.name(ch, "?").split(" ")[0] for ch in text
              if ch.isalpha() and not ch.isascii()}
    if any(ch.isascii() and ch.isalpha() for ch in text):
        script.add("LATIN")
    return Features(
        numbers=tuple(numbers), negation=frozenset(negation),
        polarity=frozenset(w for w in plain if w in POLARITY), quoted=quoted,
        units=tuple(units), direction=tuple(direction),
        time=frozenset(w for w in plain if w in TIME_WORDS), script=frozenset(script))


def disagreement(a: str, b: str) -> str | None:
    """The first guard on which prompts ``a`` and ``b`` differ, or None when all agree."""
    fa, fb = features(a), features(b)
    for name in Features.__slots__:
        if getattr(fa, name) != getattr(fb, name):
            return name
    return None


def unsuitable(text: str) -> str | None:
    """Why a prompt must not take part in semantic matching at all (None: it may)."""
    if "```" in text:
        return "code"
    if _URL.search(text):
        return "url"
    if _CODE_LINE.search(text):
        return "code"
    return None
