"""A judge policy being set: its key variable against the operator's allow-list, its
patterns compiled within a time and memory bound, its JSON Schema's nesting bounded."""

from __future__ import annotations

import resource
import time

import pytest
from pydantic import ValidationError

from loraloop.adapters import patterns
from loraloop.adapters.judge_keys import check_key_variables
from loraloop.adapters.training_policy import TrainingPolicy

ALLOWED = ("JUDGE_*", "OPENAI_API_KEY")


def admitted(judge: dict, allowed: tuple[str, ...] = ALLOWED) -> TrainingPolicy:
    return TrainingPolicy.admitted({"judge": judge}, judge_key_variables=allowed)


def llm(api_key_env: str) -> dict:
    return {
        "kind": "llm",
        "url": "http://judge.test/v1",
        "model": "m",
        "rubric": "r",
        "api_key_env": api_key_env,
    }


def refusal(judge: dict, allowed: tuple[str, ...] = ALLOWED) -> tuple[tuple, str]:
    with pytest.raises(ValidationError) as refused:
        admitted(judge, allowed)
    problem = refused.value.errors()[0]
    return problem["loc"], problem["msg"]


@pytest.mark.parametrize(
    "variable",
    [
        "LORALOOP_ADMIN_KEY",
        "LORALOOP_DATABASE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "DATABASE_URL",
        "PGPASSWORD",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "HF_TOKEN",
    ],
)
def test_the_servers_and_trainers_credentials_are_refused_whatever_the_allow_list(variable):
    loc, message = refusal(llm(variable), allowed=(*ALLOWED, variable))
    assert loc == ("judge", "llm", "api_key_env")
    assert f"{variable} is never sent to a judge" in message


def test_a_key_variable_outside_the_allow_list_is_refused_saying_which_setting_allows_it():
    loc, message = refusal(llm("SOME_OTHER_KEY"))
    assert loc == ("judge", "llm", "api_key_env")
    assert "JUDGE_*, OPENAI_API_KEY" in message and "LORALOOP_JUDGE_KEY_VARIABLES" in message
    assert admitted(llm("JUDGE_ACME")).judge.api_key_env == "JUDGE_ACME"
    assert admitted(llm("OPENAI_API_KEY")).judge.api_key_env == "OPENAI_API_KEY"
    assert "not a variable judges may use" in refusal(llm("OPENAI_API_KEY_2"))[1]
    # Read back from the registry the policy is not judged again: the trainer refuses it
    # when it builds the judge, and the rest of the policy stays readable.
    assert TrainingPolicy.stored({"judge": llm("SOME_OTHER_KEY")}).judge is not None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (("LORALOOP_*",), "never sent to a judge"),
        (("AWS_SECRET_ACCESS_KEY",), "never sent"),
        (("judge_key",), "not an upper-case variable name"),
        (("*",), "not an upper-case"),
    ],
)
def test_the_allow_list_itself_is_checked_at_start_up(entries, message):
    with pytest.raises(ValueError, match=message):
        check_key_variables(entries)


NESTED_REPEATS = "((a{1,100}){1,100}){1,100}"  # 26 characters


@pytest.mark.parametrize("field", ["required", "forbidden"])
def test_a_pattern_of_nested_counted_repeats_is_refused_at_once_without_growing(field):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    loc, message = refusal({"kind": "rules", field: ["ok", NESTED_REPEATS + "(b{1,100})"]})
    assert time.monotonic() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 << 10  # KiB
    assert loc == ("judge", "rules", field, 1) and "repeats too much" in message


def test_schema_patterns_are_bounded_as_the_judges_own():
    loc, message = refusal(
        {"kind": "rules", "json_schema": {"type": "string", "pattern": "((x{100}){100}){100}"}}
    )
    assert loc == ("judge", "rules", "json_schema") and "repeats too much" in message
    loc, message = refusal(
        {
            "kind": "rules",
            "json_schema": {"type": "object", "patternProperties": {"((x{100}){100}){100}": {}}},
        }
    )
    assert "repeats too much" in message
    loc, message = refusal(
        {
            "kind": "rules",
            "json_schema": {
                "type": "object",
                "patternProperties": {"^a": {}},
                "unevaluatedProperties": False,
            },
        }
    )
    assert "use additionalProperties" in message


def test_a_pattern_the_static_bound_misjudges_is_still_compiled_within_bounds():
    """In verbose mode `#[` opens a comment, not a class: the static reading skips what
    follows, so the child process is what refuses it, in time, outside this process."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    loc, message = refusal({"kind": "rules", "required": ["(?x)#[\n((a{100}){100}){300}"]})
    assert time.monotonic() - started < patterns.COMPILE_SECONDS + 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 << 10
    assert loc == ("judge", "rules", "required")
    assert "to compile" in message


def test_the_child_compiler_names_each_refusal():
    verdicts = patterns.compile_in_child(["ok", "(x{1000}){1000}", "(unclosed"], 10, 128 << 20)
    assert verdicts["ok"] is None
    assert "too much memory" in verdicts["(x{1000}){1000}"]
    assert "is not a regular expression" in verdicts["(unclosed"]
    slow = patterns.compile_in_child(["ok", "((a{100}){100}){400}", "later"], 0.5, 4 << 30)
    assert slow == {
        "ok": None,
        "((a{100}){100}){400}": "/((a{100}){100}){400}/ takes more than 0.5 s to "
        "compile; simplify it",
    }


def test_a_schema_nested_hundreds_of_levels_is_refused_naming_the_field():
    schema: dict = {}
    node = schema
    for _ in range(300):
        node["items"] = {}
        node = node["items"]
    for validate in (
        lambda: admitted({"kind": "rules", "json_schema": schema}),
        lambda: TrainingPolicy.stored({"judge": {"kind": "rules", "json_schema": schema}}),
    ):
        with pytest.raises(ValidationError) as refused:
            validate()
        problem = refused.value.errors()[0]
        assert problem["loc"] == ("judge", "rules", "json_schema")
        assert "nests deeper than 32 levels" in problem["msg"]
