"""The per-tenant token bucket."""

from __future__ import annotations

from loraloop.serve.token_budget import TokenBudget


def test_token_budget_refills_and_refuses_when_spent():
    now = [0.0]
    budget = TokenBudget(tokens_per_minute=600, clock=lambda: now[0])  # 10 tokens a second
    assert budget.wait_s("acme") == 0
    budget.spend("acme", 700)  # one long answer overdraws the bucket
    assert budget.wait_s("acme") == 11  # -100 tokens: 10 s back to zero, then one more
    assert budget.wait_s("globex") == 0  # other tenants keep their own budget
    now[0] = 11.0
    assert budget.wait_s("acme") == 0
    now[0] = 1000.0
    budget.spend("acme", 0)
    assert budget._level("acme") == 600  # never above one minute's worth
