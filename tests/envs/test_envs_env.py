"""ToolEnv episodes end to end on the host: calls answered, malformed calls and failing tools
turned into error observations, the final turn scored, max_turns enforced; the python tool in
the sandbox; observation templates from a chat template with a tool role, and the token cap."""

import pytest

from jaxrl_lrm.data.tokenizer import CharTokenizer, HFTokenizer
from jaxrl_lrm.envs import Step, make_tool_env, resolve_environment
from jaxrl_lrm.envs import template as tmpl
from jaxrl_lrm.envs.tools import format_call


@pytest.fixture(scope="module")
def env():
    e = make_tool_env(
        tools=[
            "calculator",
            "python",
            "toy_tools:ECHO",
            {"name": "toy_tools:make_misbehaving", "which": "hang"},
            {"name": "toy_tools:make_misbehaving", "which": "crash"},
        ],
        reward="toy_tools:exact_reward",
        max_turns=3,
        timeout_s=2.0,
        max_chars=200,
        error_reward=-0.5,
    )
    yield e
    e.runner.close()


def test_episode_calls_then_answers(env):
    ep = env({"answer": "5535"})
    s1 = ep.step("I will use the tool. " + format_call("calculator", {"expression": "123*45"}))
    assert (s1.observation, s1.reward, s1.done, s1.tool_calls, s1.tool_errors) == (
        "5535",
        0.0,
        False,
        1,
        0,
    )
    s2 = ep.step("The answer is 5535.")
    assert (s2.observation, s2.reward, s2.done) == (None, 1.0, True)
    assert env({"answer": "7"}).step("It is 8.").reward == 0.0


@pytest.mark.parametrize(
    "turn, status",
    [
        ("<tool_call>{oops}</tool_call>", "error: the tool call is not valid JSON"),
        ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', "error: unknown tool 'rm'"),
        (format_call("calculator", {"expression": "import os"}), "error (error): CalculatorError"),
        (format_call("hang", {}), "error (timeout): the tool did not finish within 2 s"),
        (format_call("crash", {}), "error (crashed): the tool's process died"),
    ],
)
def test_bad_calls_become_error_observations(env, turn, status):
    s = env({"answer": "1"}).step(turn)
    assert s.observation.startswith(status) and not s.done
    assert (s.tool_calls, s.tool_errors, s.reward) == (1, 1, -0.5)


def test_max_turns_ends_the_episode(env):
    ep = env({"answer": "1"})
    call = format_call("echo", {"text": "a"})
    assert [ep.step(call).done for _ in range(3)] == [False, False, True]


def test_python_tool_runs_in_the_sandbox(env):
    s = env({}).step(format_call("python", {"code": "print(sum(range(10)))"}))
    assert s.observation == "45\n" and s.tool_errors == 0
    net = "import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)"
    s = env({}).step(format_call("python", {"code": net}))
    assert s.observation.startswith("error (error): RuntimeError: the program exited with code 1")
    assert "OSError: [Errno 101] Network is unreachable" in s.observation  # the tail is kept
    s = env({}).step(format_call("python", {"code": "print('x' * 100000)"}))
    assert s.observation == "x" * 200  # the runner's max_chars


def test_step_and_environment_validation():
    with pytest.raises(ValueError, match="needs an observation"):
        Step(observation=None, done=False)
    with pytest.raises(ValueError, match="environment 'nope'"):
        resolve_environment("nope")
    with pytest.raises(ValueError, match="listed twice"):
        make_tool_env(tools=["calculator", "calculator"])
    with pytest.raises(ValueError, match="bad options"):
        resolve_environment("tools", {"tools": ["calculator"], "turns": 3})


class _FakeHF:
    """A chat template with a Qwen-style tool role (rendered by transformers' own Jinja)."""

    chat_template = (
        "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
        "{{ m.content }}\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n"
        "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        from transformers.utils.chat_template_utils import render_jinja_template

        out, _ = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
        )
        return out[0]


def test_observation_template_from_a_tool_role():
    hf = HFTokenizer.__new__(HFTokenizer)
    hf.tokenizer = _FakeHF()
    t = tmpl.from_tokenizer(hf)
    assert t.prefix == "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
    assert t.suffix == "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert tmpl.from_tokenizer(CharTokenizer("ab")) is tmpl.PLAIN


def test_observation_tokens_cap():
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 <>/_[]\n")
    ids, cut = tmpl.observation_tokens(tok, tmpl.PLAIN, "abc", 5)
    assert tok.decode(ids) == "\n<tool_response>\nabc\n</tool_response>\n" and not cut
    ids, cut = tmpl.observation_tokens(tok, tmpl.PLAIN, "abcdefgh", 5)
    assert cut and tok.decode(ids) == tmpl.PLAIN.render("abcde" + tmpl.CUT_MARK)
