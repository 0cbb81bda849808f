"""Verifiable rewards: an answer's score is the share of the policy's checks it passes.

Regular expressions run on text nobody vetted (the model's answers), so each search has a
time limit: a pattern that would backtrack for ever on some answer makes the judge abstain
on that answer instead of stopping the run. That holds for the patterns inside the JSON
Schema too: jsonschema searches them with Python's `re`, which has no time limit, so the
keywords that search (pattern, patternProperties, additionalProperties) are replaced by ones
that search with `regex`, all of one answer's searches within REGEX_TIMEOUT_S. (The policy
refuses unevaluatedProperties beside patternProperties, the one other place `re` runs.)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import regex
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend, validator_for

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import RuleJudgePolicy

from .interface import ScoringJudge, Tally, Verdict

REGEX_TIMEOUT_S = 0.25


class PatternTimeout(Exception):
    """A search ran out of time; the message is the abstention's reason."""


class RuleJudge(ScoringJudge):
    def __init__(self, policy: RuleJudgePolicy, tokenizer) -> None:
        self.policy, self.tokenizer = policy, tokenizer
        rules = json.dumps(policy.model_dump(mode="json"), sort_keys=True)
        self.name = f"rules:{hashlib.sha256(rules.encode()).hexdigest()[:12]}"
        self.tally = Tally()
        self._required = [regex.compile(p) for p in policy.required]
        self._forbidden = [regex.compile(p) for p in policy.forbidden]
        self._schema = None
        if policy.json_schema is not None:
            self._schema = SchemaCheck(policy.json_schema)

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict:
        try:
            failed, total = self._failed_checks(completion)
        except PatternTimeout as exc:
            return self.tally.count(Verdict.abstain(str(exc)))
        if total == 0:
            return self.tally.count(Verdict.abstain("no checks"))
        rationale = "passes every check" if not failed else "fails " + ", ".join(failed)
        return self.tally.count(Verdict((total - len(failed)) / total, rationale))

    def _failed_checks(self, completion: str) -> tuple[list[str], int]:
        p, failed, total = self.policy, [], 0

        def check(passed: bool, name: str) -> None:
            nonlocal total
            total += 1
            if not passed:
                failed.append(name)

        if p.min_tokens is not None or p.max_tokens is not None:
            tokens = len(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
            if p.min_tokens is not None:
                check(tokens >= p.min_tokens, f"min_tokens ({tokens} < {p.min_tokens})")
            if p.max_tokens is not None:
                check(tokens <= p.max_tokens, f"max_tokens ({tokens} > {p.max_tokens})")
        for pattern in self._required:
            check(_search(pattern, completion), f"required /{pattern.pattern}/")
        for pattern in self._forbidden:
            check(not _search(pattern, completion), f"forbidden /{pattern.pattern}/")
        if p.valid_json or self._schema is not None:
            try:
                document = json.loads(completion)
            except ValueError:
                check(False, "valid_json")
            else:
                check(True, "valid_json")
                if self._schema is not None:
                    check(self._schema.is_valid(document), "json_schema")
        return failed, total


def _search(pattern: regex.Pattern, text: str) -> bool:
    try:
        return pattern.search(text, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise PatternTimeout("regex timeout") from None


class SchemaCheck:
    """A JSON Schema whose pattern searches share one time limit per document checked."""

    def __init__(self, schema: dict) -> None:
        base = validator_for(schema, default=Draft202012Validator)
        keywords = {
            "pattern": self._pattern,
            "patternProperties": self._pattern_properties,
            "additionalProperties": self._additional_properties,
        }
        bounded = extend(base, {k: f for k, f in keywords.items() if k in base.VALIDATORS})
        self._validator = bounded(schema)
        self._deadline = 0.0

    def is_valid(self, document) -> bool:
        self._deadline = time.monotonic() + REGEX_TIMEOUT_S
        return self._validator.is_valid(document)

    def _search(self, pattern: str, text: str) -> bool:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return regex.search(pattern, text, timeout=left) is not None
        except TimeoutError:
            raise PatternTimeout("regex timeout in json_schema") from None

    # The keywords as jsonschema defines them, searching with `regex` under the deadline.
    def _pattern(self, validator, pattern, instance, schema) -> Iterator[ValidationError]:
        if validator.is_type(instance, "string") and not self._search(pattern, instance):
            yield ValidationError(f"{instance[:80]!r} does not match {pattern!r}")

    def _pattern_properties(
        self, validator, patterns, instance, schema
    ) -> Iterator[ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        for pattern, subschema in patterns.items():
            for name, value in instance.items():
                if self._search(pattern, name):
                    yield from validator.descend(value, subschema, path=name, schema_path=pattern)

    def _additional_properties(
        self, validator, additional, instance, schema
    ) -> Iterator[ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        extras = [
            name
            for name in instance
            if name not in known and not any(self._search(pattern, name) for pattern in patterns)
        ]
        if validator.is_type(additional, "object"):
            for name in extras:
                yield from validator.descend(instance[name], additional, path=name)
        elif not additional and extras:
            yield ValidationError(f"additional properties are not allowed ({extras[:5]!r})")
