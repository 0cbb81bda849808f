"""The admin API: operators manage tenants, keys, adapters and versions."""

# Names the person behind an admin call in the audit trail (the credential is shared).
ACTOR_HEADER = "X-Loraloop-Actor"
