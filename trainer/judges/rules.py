"""Verifiable rewards: an answer's score is the share of the policy's checks it passes.

Regular expressions run on text nobody vetted (the model's answers), so each search has a
time limit: a pattern that would backtrack for ever on some answer makes the judge abstain
on that answer instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import json

import regex
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for

from loraloop.adapters.policy import RuleJudgePolicy
from loraloop.adapters.prompts import StoredPrompt

from .protocol import ScoringJudge, Tally, Verdict

REGEX_TIMEOUT_S = 0.25


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
            self._schema = validator_for(policy.json_schema, default=Draft202012Validator)(
                policy.json_schema)

    def score(self, prompt: StoredPrompt, completion: str) -> Verdict:
        try:
            failed, total = self._failed_checks(completion)
        except TimeoutError:
            return self.tally.count(Verdict.abstain("regex timeout"))
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
    return pattern.search(text, timeout=REGEX_TIMEOUT_S) is not None
