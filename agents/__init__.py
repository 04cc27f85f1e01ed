"""Agent runtimes: the worker base, example agents and model-backed workers."""
