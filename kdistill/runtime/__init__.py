"""What runs around the core: components built from a config, data preparation,
threads, signals, the run hooks, evaluation of artifacts and support-set helpers
shared by methods."""
