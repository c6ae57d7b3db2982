"""The robustness fuzz suite: hostile files, special paths, options, signals and concurrent writers.

`python -m tests.fuzz` runs the 500-case slice that CI runs; `python -m tests.fuzz --full` runs 10,000 cases.
"""
