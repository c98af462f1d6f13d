"""The pipeline engine: config, stage graph, up-to-date checks, lock file, runner and reports."""
