"""Putting the runtime and its settings on a device: the `device:` section and runtime/ with its virtualenv."""
