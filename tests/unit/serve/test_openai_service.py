"""Per-tenant prefix-cache salts."""

from __future__ import annotations

from loraloop.serve.openai.service import CacheSalts


def test_prefix_cache_salts_separate_tenants():
    salts = CacheSalts()
    acme, globex, operators = salts.of("acme"), salts.of("globex"), salts.of(None)
    assert len({acme, globex, operators}) == 3
    assert salts.of("acme") == acme  # stable, so a tenant still reuses its own cache
    assert CacheSalts().of("acme") != acme  # keyed per process: not computable by clients
