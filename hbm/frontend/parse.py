"""Parse formula text (and prior/optimizer call text) with the one lark grammar.

``parse_formula("y ~ x + (1 | g)")`` returns a :class:`hbm.frontend.ast.Formula`;
``parse_call("normal(0, 1)")`` returns a :class:`Fn` (or a number).
Any failure is an :class:`HbmError` with a caret under the problem.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Transformer, v_args

from hbm.frontend import ast as A
from hbm.frontend import nl_ast as N
from hbm.errors import HbmError, Span, did_you_mean
from hbm.vocabulary.families import INVERSE_LINKS
from hbm.vocabulary.functions import FORMULA_FUNCTIONS
from hbm.vocabulary.limits import MAX_FORMULA_CHARS, MAX_NESTING, MAX_TERMS

GRAMMAR_PATH = Path(__file__).resolve().parent / "formula.lark"   # package data (pyproject.toml)

RHS_FUNCTIONS = FORMULA_FUNCTIONS      # hbm/vocabulary/functions.py: OPS entries with formula=True
LINKS = tuple(INVERSE_LINKS)           # hbm/vocabulary/families.py
ADDITIONS = ("trials", "se", "weights")


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR_PATH.read_text(), start=["formula", "nl_formula", "call_expr"], parser="lalr",
                propagate_positions=True, maybe_placeholders=False)


def _span(meta_or_tok) -> Span:
    if isinstance(meta_or_tok, Token):
        return Span(meta_or_tok.start_pos, meta_or_tok.end_pos)
    return Span(meta_or_tok.start_pos, meta_or_tok.end_pos)


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def _err(self, msg: str, span: Span, hint: str | None = None):
        raise HbmError(msg, span=span, source=self.source, hint=hint, where="formula")

    # ---- left side
    def formula(self, meta, items):
        return A.Formula(items[0], items[1], source=self.source)

    def lhs(self, meta, items):
        resp, adds = items[0], tuple(items[1:])
        kinds = [a.kind for a in adds]
        for a in adds:
            if kinds.count(a.kind) > 1:
                self._err(f"'{a.kind}()' is given twice", a.span)
        return A.Response(resp.column, resp.link, adds, span=_span(meta))

    def response_plain(self, meta, items):
        return A.Response(str(items[0]), None, span=_span(meta))

    def response_link(self, meta, items):
        link, col = items
        if str(link) not in LINKS:
            self._err(f"unknown link function '{link}' on the response", _span(link),
                      did_you_mean(str(link), LINKS) or f"links are {', '.join(LINKS)}")
        return A.Response(str(col), str(link), span=_span(meta))

    def addition(self, meta, items):
        kind, col = items
        if str(kind) not in ADDITIONS:
            self._err(f"unknown addition term '{kind}()'", _span(kind),
                      did_you_mean(str(kind), ADDITIONS) or f"addition terms are {', '.join(ADDITIONS)}")
        return A.Addition(str(kind), str(col), span=_span(meta))

    # ---- right side
    def var(self, meta, items):
        return A.Var(str(items[0]), span=_span(meta))

    def num(self, meta, items):
        value = float(items[0])
        if not math.isfinite(value):
            self._err(f"the number {items[0]} is too large", _span(meta))
        return A.Num(value, span=_span(meta))

    def call(self, meta, items):
        name, arg = items
        if str(name) not in RHS_FUNCTIONS:
            self._err(f"unknown function '{name}'", _span(name),
                      did_you_mean(str(name), RHS_FUNCTIONS)
                      or f"functions are {', '.join(RHS_FUNCTIONS)}")
        return A.Call(str(name), arg, span=_span(meta))

    def paren(self, meta, items):
        return A.Paren(items[0], span=_span(meta))

    def neg(self, meta, items):
        return A.Neg(items[0], span=_span(meta))

    def _bin(op):  # noqa: N805 - a small factory for the binary operators
        def f(self, meta, items):
            return A.BinOp(op, items[0], items[1], span=_span(meta))
        return f

    add, sub, star, inter = _bin("+"), _bin("-"), _bin("*"), _bin(":")

    def chain(self, meta, items):
        return A.Chain(items[0], items[1], span=_span(meta))

    def group_term(self, meta, items):
        return A.GroupTerm(items[0], items[1], correlated=True, span=_span(meta))

    def group_term_uncorrelated(self, meta, items):
        return A.GroupTerm(items[0], items[1], correlated=False, span=_span(meta))

    def group(self, meta, items):
        return A.Group(tuple(items), span=_span(meta))

    def gfactor(self, meta, items):
        return A.GroupFactor(tuple(str(t) for t in items), span=_span(meta))


    # ---- non-linear formulas (the nl_ rules)
    def nl_formula(self, meta, items):
        return N.NonlinearFormula(items[0], items[1], source=self.source)

    def nl_name(self, meta, items):
        return N.Name(str(items[0]), span=_span(meta))

    def nl_number(self, meta, items):
        return N.Number(self.num(meta, items).value, span=_span(meta))

    def nl_call(self, meta, items):
        name, arg = items
        if str(name) not in N.FUNCTIONS:
            self._err(f"unknown function '{name}'", _span(name),
                      did_you_mean(str(name), N.FUNCTIONS)
                      or f"functions are {', '.join(N.FUNCTIONS)}")
        return N.Apply(str(name), arg, span=_span(meta))

    def nl_neg(self, meta, items):
        return N.Negate(items[0], span=_span(meta))

    def _nl_bin(op):  # noqa: N805 - a small factory for the binary operators
        def f(self, meta, items):
            return N.Binary(op, items[0], items[1], span=_span(meta))
        return f

    nl_add, nl_sub, nl_mul, nl_div, nl_pow = _nl_bin("+"), _nl_bin("-"), _nl_bin("*"), _nl_bin("/"), _nl_bin("^")


# ---------------------------------------------------------------- call syntax (priors, optimizers)
@dataclass(frozen=True, slots=True)
class Fn:
    """A call ``name(args..., key=value...)`` as written in a spec."""

    name: str
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def kw(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def __str__(self) -> str:
        parts = [_fmt_value(a) for a in self.args] + [f"{k}={_fmt_value(v)}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return A._fmt_num(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, str) and not v.isidentifier():
        return repr(v)
    return str(v)


class _ToCall(Transformer):
    def call_expr(self, items):
        return items[0]

    def number(self, items):
        return float(items[0])

    def ident(self, items):
        return str(items[0])

    def string(self, items):
        return str(items[0])[1:-1]

    def list(self, items):
        return tuple(i for i in items if i is not None)

    def kwarg(self, items):
        return ("=", str(items[0]), items[1])

    def fn(self, items):
        name, rest = str(items[0]), [i for i in items[1:] if i is not None]
        args = tuple(a for a in rest if not (isinstance(a, tuple) and len(a) == 3 and a[0] == "="))
        kwargs = tuple((a[1], a[2]) for a in rest if isinstance(a, tuple) and len(a) == 3 and a[0] == "=")
        return Fn(name, args, kwargs)


# ---------------------------------------------------------------- entry points
def parse_formula(text: str) -> A.Formula:
    """Parse a linear model formula such as ``y ~ x + (1 | g)``."""
    return _parse_formula_text(text, "formula", "predictors", "y ~ x + (1 | g)")


def parse_nonlinear(text: str) -> N.NonlinearFormula:
    """Parse a non-linear formula such as ``y ~ a * exp(-b * x)`` (its names are columns or
    parameters declared under ``params:``; see :mod:`hbm.nonlinear`)."""
    return _parse_formula_text(text, "nl_formula", "expression", "y ~ a * exp(-b * x)")


def _parse_formula_text(text: str, start: str, right: str, example: str):
    if not isinstance(text, str) or not text.strip():
        raise HbmError("the formula is empty", where="formula",
                       hint=f"write it as 'response ~ {right}', e.g. '{example}'")
    if "~" not in text:
        raise HbmError(f"a formula needs '~' between the response and the {right}",
                       span=Span(0, len(text)), source=text, where="formula", hint=f"e.g. '{example}'")
    tree = _parse(text, start)
    try:
        return _ToAst(text).transform(tree)
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, HbmError):
            raise e.orig_exc from None
        raise


def parse_call(text: str | float | int) -> Fn | float:
    """Parse ``normal(0, 1)``, ``adam(lr=0.01)`` or a number."""
    if isinstance(text, bool):
        raise HbmError(f"expected a number or a call such as normal(0, 1), got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str) or not text.strip():
        raise HbmError(f"expected a number or a call such as normal(0, 1), got {text!r}")
    return _ToCall().transform(_parse(text, "call_expr"))


_TOKEN_WORDS = {
    "RPAR": "')'", "LPAR": "'('", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "COLON": "':'",
    "VBAR": "'|'", "__ANON_0": "'||'", "TILDE": "'~'", "SLASH": "'/'", "NAME": "a name", "NUMBER": "a number",
    "SIGNED_NUMBER": "a number", "COMMA": "','", "EQUAL": "'='", "$END": "the end",
    "LSQB": "'['", "RSQB": "']'", "ESCAPED_STRING": "a string", "CIRCUMFLEX": "'^'",
}


def check_size(text: str, where: str = "formula", operators: bool = True) -> None:
    """Refuse text that would exhaust the parser's recursion (hbm/vocabulary/limits.py), before lark sees
    it: more than MAX_FORMULA_CHARS characters, parentheses or brackets nested more than MAX_NESTING
    deep (a caret under the first one too deep), or, with ``operators``, more than MAX_TERMS operators
    (a sum nests one level per term). Text inside string literals is not counted."""
    depth, ops, quoted, prev = 0, 0, False, ""
    for i, ch in enumerate(text[:MAX_FORMULA_CHARS + 1]):   # bounded work, whatever the length
        if quoted:
            quoted = ch != '"' or prev == "\\"
        elif ch == '"':
            quoted = True
        elif ch in "([":
            depth += 1
            if depth > MAX_NESTING:
                source, span = _excerpt(text, i)
                raise HbmError(f"the {where} nests parentheses more than {MAX_NESTING} deep", span=span,
                               source=source, where=where,
                               hint=f"hbm accepts at most {MAX_NESTING} levels of parentheses; "
                                    "remove the redundant ones")
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif operators and ch in "+-*/:|^," and not (ch == "|" and prev == "|"):
            ops += 1
            if ops > MAX_TERMS:
                total = sum(text.count(c) for c in "+-*/:^,") + text.count("|") - text.count("||")
                source, span = _excerpt(text, i)
                raise HbmError(f"the {where} has {total:,} operators (+ - * / : | ^); at most {MAX_TERMS} "
                               "are allowed", span=span, source=source, where=where,
                               hint=f"a formula may have at most {MAX_TERMS + 1} terms; a factor or a group "
                                    "term such as (1 | g) stands for many columns")
        prev = ch
    if len(text) > MAX_FORMULA_CHARS:
        raise HbmError(f"the {where} is {len(text):,} characters long; at most {MAX_FORMULA_CHARS:,} are allowed",
                       where=where, hint="no model needs a formula this long: write fewer terms, or use a "
                                         "factor or a group term such as (1 | g) for many columns")


def _excerpt(text: str, pos: int, width: int = 60) -> tuple[str, Span]:
    """``text`` around ``pos`` (at most ``width`` characters either side, elided with '...'), and the
    span of ``pos`` in it: a caret line that fits on a screen."""
    lo, hi = max(0, pos - width), min(len(text), pos + width)
    head, tail = ("..." if lo else ""), ("..." if hi < len(text) else "")
    line = text[lo:hi].replace("\n", " ")
    return head + line + tail, Span(pos - lo + len(head), pos - lo + len(head) + 1)


def _parse(text: str, start: str):
    where = "value" if start == "call_expr" else "formula"
    check_size(text, where, operators=start != "call_expr")
    try:
        return _parser().parse(text, start=start)
    except lark.exceptions.UnexpectedCharacters as e:
        raise HbmError(f"unexpected character {text[e.pos_in_stream]!r}",
                       span=Span(e.pos_in_stream, e.pos_in_stream + 1), source=text, where=where,
                       hint=_expected_hint(e.allowed)) from None
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            pos = len(text.rstrip())
            raise HbmError(f"the {where} ends too early", span=Span(pos, pos + 1), source=text,
                           where=where, hint=_expected_hint(e.expected)) from None
        word = _TOKEN_WORDS.get(tok.type, repr(str(tok)))
        word = word[2:] if word.startswith("a ") else word
        raise HbmError(f"unexpected {word}"
                       + (f" '{tok}'" if tok.type in ("NAME", "NUMBER", "SIGNED_NUMBER") else ""),
                       span=Span(tok.start_pos, tok.end_pos or tok.start_pos + 1), source=text,
                       where=where, hint=_expected_hint(e.expected)) from None
    except lark.exceptions.UnexpectedEOF as e:
        pos = len(text.rstrip())
        raise HbmError(f"the {where} ends too early", span=Span(pos, pos + 1), source=text,
                       where=where, hint=_expected_hint(e.expected)) from None


def _expected_hint(expected) -> str | None:
    words = sorted({_TOKEN_WORDS.get(t, t) for t in (expected or ()) if not t.startswith("__")})
    return f"expected {', '.join(words)}" if words else None
