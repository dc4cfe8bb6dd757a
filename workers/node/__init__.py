"""The node runtime: what a worker process runs (bootstep, endpoint and periodic tasks,
heartbeats, the managers of this process, request logs). Loaded only by workers: the
app names :class:`workers.node.node.NodeStep` to Celery by string.
"""
