"""`atlantic bench`: each workload beside its own ceiling, in the same run (see runner.py)."""
