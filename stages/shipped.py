"""Where the photos, prompts and vocabulary that ship with the project lie: the stages' defaults name them
wherever the config file lies and whatever the working directory (a path written in the config is relative to
the config)."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent
