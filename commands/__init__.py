"""What tasks.py runs: the command glue (cli.py), the server on a host (serving.py), the build report."""
