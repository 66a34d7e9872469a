"""The daemon: OpenAI-compatible HTTP API over the engine, scheduling, discovery, security."""
