"""The admin API: operators manage tenants, keys, adapters and versions."""
