"""The A1111-compatible interrogation service: `python -m runtime.server --models DIR`."""
