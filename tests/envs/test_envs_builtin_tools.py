"""The built-in tools against independent references: the calculator against Fraction
arithmetic and refusing everything but arithmetic; BM25 against the formula computed by hand;
the tool-call parser on well-formed and malformed calls."""

import json
import math
import random
from fractions import Fraction

import pytest

from jaxrl_lrm.envs import calculator, search
from jaxrl_lrm.envs.tools import (
    Tool,
    ToolCallError,
    calculator_tool,
    format_call,
    parse_tool_call,
    resolve_tool,
    search_tool,
)


def test_calculator_matches_fraction_arithmetic_on_random_expressions():
    rng = random.Random(0)
    for _ in range(300):
        a, b, c = (rng.randint(-999, 999) for _ in range(3))
        d = rng.randint(1, 99)
        expr = f"({a}) * ({b}) - ({c}) / {d} + {a} // {d} - {b} % {d}"
        want = Fraction(a) * b - Fraction(c, d) + (a // d) - (b % d)
        assert calculator.evaluate(expr) == want, expr
    assert calculator.calculator("123 * 45") == "5535"
    assert calculator.calculator("0.1 + 0.2") == "0.3"
    assert calculator.calculator("1/3 + 1/6") == "0.5"
    assert calculator.calculator("1/3 + 1/5") == "8/15"
    assert calculator.calculator("-1.5 * 2.25") == "-3.375"
    assert calculator.calculator("2^10") == "1024"
    assert calculator.calculator("sqrt(16/9) + max(1, 2, 3)") == "13/3"
    assert calculator.format_number(Fraction(1, 7)) == "1/7"
    assert calculator.format_number(Fraction(-1, 8)) == "-0.125"


@pytest.mark.parametrize(
    "expr, match",
    [
        ("__import__('os').system('true')", "unsupported expression"),
        ("__import__('os')", "unsupported call"),
        ("abs(x=1)", "unsupported expression"),
        ("(1).real", "unsupported expression"),
        ("x + 1", "unsupported expression 'x'"),
        ("'a' * 3", "unsupported literal 'a'"),
        ("[1, 2]", "unsupported expression"),
        ("lambda: 1", "unsupported expression"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "exponent"),
        ("2 ** 0.5", "integer exponents"),
        ("10 ** 999", "digits"),
        ("1e400", "floating-point range"),
        ("sqrt(2)", "not rational"),
        ("1 +", "cannot parse"),
        ("1" * 1001, "at most 1000"),
        ("True + 1", "unsupported literal True"),
    ],
)
def test_calculator_refuses_everything_but_arithmetic(expr, match):
    with pytest.raises(calculator.CalculatorError, match=match):
        calculator.evaluate(expr)


def _bm25_reference(docs, query, k1=1.5, b=0.75):
    toks = [search.words(f"{d.get('title', '')} {d['text']}") for d in docs]
    n, avg = len(docs), sum(map(len, toks)) / len(docs)
    out = []
    for t in toks:
        s = 0.0
        for w in set(search.words(query)):
            df = sum(w in u for u in toks)
            f = t.count(w)
            if df and f:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(t) / avg))
        out.append(s)
    return out


CORPUS = [
    {"id": "a", "title": "Paris", "text": "Paris is the capital of France."},
    {"id": "b", "title": "Rome", "text": "Rome is the capital of Italy. Rome is old."},
    {"id": "c", "text": "The Seine flows through Paris and Paris is big."},
    {"id": "d", "text": "Bananas are yellow."},
]


def test_bm25_matches_the_formula_and_ranks(tmp_path):
    index = search.build_index(CORPUS)
    for q in ["capital of France", "Paris", "rome old", "yellow bananas", "nothing here"]:
        assert index.scores(q) == pytest.approx(_bm25_reference(CORPUS, q), rel=1e-12)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in CORPUS) + "\n")
    assert search.search("Paris", corpus=str(path), k=1) == (  # title + text: 2 in 7 words
        "[a] Paris: Paris is the capital of France."
    )
    assert search.search("Seine", corpus=str(path), k=3) == (
        "[c] The Seine flows through Paris and Paris is big."
    )
    assert search.search("capital italy", corpus=str(path), k=2).startswith("[b] Rome: ")
    assert search.search("zebra", corpus=str(path)) == "no results"
    tool = search_tool(corpus=str(path))
    assert tool.fn(query="bananas") == "[d] Bananas are yellow."
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: not JSON"):
        search.load_index(str(path))


def test_parse_tool_call_well_formed():
    tools = {"calculator": calculator_tool()}
    text = "let me compute " + format_call("calculator", {"expression": "2+2"})
    call = parse_tool_call(text, tools)
    assert (call.name, call.arguments) == ("calculator", {"expression": "2+2"})
    two = format_call("calculator", {"expression": "1"}) + format_call(
        "calculator", {"expression": "7"}
    )
    assert parse_tool_call(two, tools).arguments == {"expression": "7"}  # the last block


@pytest.mark.parametrize(
    "body, match",
    [
        ("no call at all", "no complete"),
        ("<tool_call>{</tool_call>", "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", "must be"),
        ('<tool_call>{"name": 3}</tool_call>', "must be"),
        ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', "unknown tool 'rm'"),
        ('<tool_call>{"name": "calculator", "arguments": 5}</tool_call>', "JSON object"),
        ('<tool_call>{"name": "calculator", "arguments": {}}</tool_call>', "missing required"),
        (
            '<tool_call>{"name": "calculator", "arguments": {"expression": 5}}</tool_call>',
            "must be a string",
        ),
        (
            '<tool_call>{"name": "calculator", "arguments": {"expression": "1", "x": 1}}'
            "</tool_call>",
            r"unknown argument\(s\) \['x'\]",
        ),
        ('<tool_call>{"name": "calculator", "extra": 1}</tool_call>', "unexpected key"),
        ("<tool_call>" + "[" * 100000 + "</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": 1' + "0" * 5000, "no"),
    ],
)
def test_parse_tool_call_malformed(body, match):
    with pytest.raises(ToolCallError, match=match):
        parse_tool_call(body, {"calculator": calculator_tool()})


def test_resolve_tool():
    assert resolve_tool("calculator").name == "calculator"
    assert resolve_tool("toy_tools:ECHO").name == "echo"
    assert resolve_tool("toy_tools:make_misbehaving", {"which": "hang"}).name == "hang"
    with pytest.raises(ValueError, match="expected one of"):
        resolve_tool("calc")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_tool("toy_tools:missing")
    with pytest.raises(ValueError, match="bad options"):
        resolve_tool("calculator", {"digits": 3})
    with pytest.raises(ValueError, match="parameters="):
        Tool(name="t", fn=len, description="", parameters={"type": "object", "required": ["a"]})
