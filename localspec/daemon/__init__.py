"""The daemon: the OpenAI-compatible HTTP API over the engine, its scheduler, its guards and reloads."""
