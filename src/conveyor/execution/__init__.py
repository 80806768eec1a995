"""The worker side: ``python -m conveyor.execution RUN_DIR`` runs one job.

It reads ``job.json`` from the run dir, runs the job against in-memory stores and writes
``output.json``; it never touches the database. It imports as little as possible: this
package's ``__init__`` imports nothing, and :mod:`conveyor.execution.run` loads jobflow
only when it runs a job.
"""
