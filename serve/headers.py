"""HTTP headers the API defines beyond OpenAI's, shared by the server and its clients."""

# Names the person behind an admin call in the audit trail (the credential is shared).
ACTOR_HEADER = "X-Loraloop-Actor"
# On a generation: the adapter version that served it ("acme/support@3").
VERSION_HEADER = "X-Adapter-Version"
# On feedback: "true" when a retry was answered with the first result stored for its key.
REPLAYED_HEADER = "Idempotent-Replayed"
