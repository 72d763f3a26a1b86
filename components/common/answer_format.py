"""The final-answer format every stage shares, and how a stated number is compared.

SFT data (``data_prep``) writes worked replies that end with one sentence, ``"The answer is
N."``; problem loaders normalise user answers with the same rules; the RLVR verifiers and
evaluation read that sentence back. One module below all of them keeps the writer and the
readers from drifting apart. Pure Python (no torch): anything may import it.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Context, Decimal, localcontext
from fractions import Fraction

ANSWER_PREFIX = "The answer is "

# Longest numeric string considered at all, and most digits a number may have. A reply is
# sampled text: bounding both keeps a degenerate "999...9" (or a megabyte of junk) from
# costing anything, while 100 digits is far beyond any answer the problems can have.
MAX_CHARS = 256
MAX_DIGITS = 100

# Signs and punctuation that have a non-ASCII twin a model (or a user's data set) may produce.
# Decimal digits of any script are mapped separately, through ``unicodedata.decimal``.
_CHAR_MAP = {
    "\u2212": "-",  # MINUS SIGN
    "\uff0d": "-",  # FULLWIDTH HYPHEN-MINUS
    "\uff0b": "+",  # FULLWIDTH PLUS SIGN
    "\uff0c": ",",  # FULLWIDTH COMMA
    "\uff0e": ".",  # FULLWIDTH FULL STOP
    "\uff0f": "/",  # FULLWIDTH SOLIDUS
    "\u2044": "/",  # FRACTION SLASH
}

# An integer part: plain digits, or digits grouped by threes with commas ("1,234,567").
_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_DECIMAL_RE = re.compile(rf"([+-]?)({_INT}(?:\.\d+)?|\.\d+)", re.ASCII)
_FRACTION_RE = re.compile(r"([+-]?)(\d+)/(\d+)", re.ASCII)

# "The answer is X." -- X is everything up to the next whitespace, less the sentence's full
# stop: "2.5." gives "2.5", "12." gives "12", "5.0" (no stop) gives "5.0". Group 2 holds the
# full stop when there is one, which is what ``format_score`` checks. Case-sensitive: the exact
# sentence is part of what SFT teaches and what the format reward pays for.
_ANSWER_RE = re.compile(re.escape(ANSWER_PREFIX) + r"(\S+?)(\.?)(?=\s|$)")

def _to_ascii(text: str) -> str:
    """Map digits of any script ("٣", "３") and the signs in ``_CHAR_MAP`` to ASCII."""
    out = []
    for ch in text:
        if ch in _CHAR_MAP:
            out.append(_CHAR_MAP[ch])
        elif ch.isdecimal() and not ch.isascii():
            out.append(str(unicodedata.decimal(ch)))
        else:
            out.append(ch)
    return "".join(out)


def normalize_number(text: str) -> str | None:
    """The canonical spelling of a numeric answer, or ``None`` if ``text`` is not a number.

    Two answers are the same number exactly when their canonical forms are equal strings, so
    the reward does not depend on how the model happened to write it:

    * surrounding whitespace, one trailing full stop and a leading "+" are dropped;
    * digits of any script become ASCII ("٣", "３" -> "3"), "−" (U+2212) becomes "-";
    * thousands separators are commas in groups of three ("1,234" -> "1234"); anything else
      with a comma ("1,23", "12,34,567") is not a number, since guessing would turn a wrong
      answer into a right one;
    * decimals are normalised exactly with ``Decimal`` ("2.50" -> "2.5", "4.0" -> "4",
      ".5" -> "0.5", "-0" -> "0"), never through float, so huge integers stay exact;
    * a fraction of two integers "a/b" is reduced ("6/8" -> "3/4", "4/2" -> "2"); it is *not*
      turned into a decimal, so "1/2" and "0.5" differ (1/3 has no exact decimal form, and
      the generated problems never mix the two);
    * words ("seven"), exponents ("1e3"), spaces inside the number, "inf"/"nan", division by
      zero, strings over ``MAX_CHARS`` characters or numbers over ``MAX_DIGITS`` digits give
      ``None``.
    """
    s = text.strip()
    if len(s) > MAX_CHARS:
        return None
    s = _to_ascii(s)
    s = s.removesuffix(".")
    if sum(ch.isdigit() for ch in s) > MAX_DIGITS:
        return None

    if m := _FRACTION_RE.fullmatch(s):
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den)) * (-1 if sign == "-" else 1)
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"

    if m := _DECIMAL_RE.fullmatch(s):
        sign, body = m.groups()
        # normalize() rounds to the context's precision (28 digits by default); give it room
        # for every digit a number may have so that it only strips trailing zeros.
        with localcontext(Context(prec=MAX_DIGITS + 1)):
            value = Decimal(("-" if sign == "-" else "") + body.replace(",", "")).normalize()
        if value.is_zero():
            return "0"
        return format(value, "f")  # "f": 1E+2 -> "100", never scientific notation

    return None


def _answer_key(value: str) -> str:
    """What two stated answers are compared by: the number if it is one, else the text."""
    number = normalize_number(value)
    return number if number is not None else value


def final_match(reply: str) -> re.Match[str] | None:
    """The last final-answer sentence, or ``None`` if there is none or the answers disagree.

    Several sentences that state the same value ("... The answer is 5. So the answer is 5."
    after a restatement) are fine; different values are a hedge, and a hedge earns nothing,
    or a policy could learn to list every candidate.
    """
    matches = list(_ANSWER_RE.finditer(reply))
    if not matches or len({_answer_key(m.group(1)) for m in matches}) > 1:
        return None
    return matches[-1]


def final_answer(reply: str) -> str | None:
    """The raw text of the reply's final answer ("The answer is X." gives "X"), or ``None``.

    ``None`` when the reply has no final-answer sentence (the prefix is case-sensitive, so
    "the answer is 5" has none) or states different values (see ``final_match``). The value
    is returned as written ("1,234", "5.0"); compare values through ``normalize_number``.
    """
    m = final_match(reply)
    return m.group(1) if m else None
