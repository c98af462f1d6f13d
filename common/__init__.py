"""The bottom of the project, torch-free and imported by both sides (the controller and the device): the one
error base, the JSON contract every crossing file follows, and hashing. It imports nothing of the project."""
