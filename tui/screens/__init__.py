"""Modal screens: help, confirmation, text prompt, conversation settings."""
