"""Terminal chat UI (Textual): `localspec.tui`."""
