"""``memadapter demo`` and ``memadapter ask``: the bundled SmolLM2 adapter answering questions about a
long stream (installed as ``memadapter.demo``; it loads models, so the core imports it only lazily)."""
