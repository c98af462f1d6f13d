"""What tasks.py calls beyond running stages (today: the build report)."""
