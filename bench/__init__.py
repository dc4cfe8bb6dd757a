"""taskyard's benchmark suite: every figure measured beside plain Celery in the same run.

``python -m bench [--quick] [--json PATH]`` starts a private redis-server,
taskyard nodes and plain Celery workers (:mod:`bench.plain`, the same
settings without taskyard's classes), measures each figure in interleaved
repetitions, prints one table and writes it as JSON. See :mod:`bench.suite`
for the phases and :mod:`bench.figures` for what each figure measures.
"""
