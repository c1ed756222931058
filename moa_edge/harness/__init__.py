"""Build, run and check generated models on boards."""
