"""taskyard's extensions of Celery and kombu: transport guard, consumer, signing, results.

Each is named to Celery by ``module:attribute`` in
:mod:`workers.core.application` and loaded where it runs; each patch of a
private internal says which version it targets and has a canary test
(``tests/unit/test_canaries.py``).
"""
