"""The evaluation layer: benchmarks and their reports, replay tables, roofline, plots, data splits.

It imports the core and the training layer (the learned heads); the CLI commands are its users.
"""
