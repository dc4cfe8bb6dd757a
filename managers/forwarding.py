"""Handing a request to another node: what a manager raises to have it run there."""

from __future__ import annotations


class Forward(Exception):
    """Raised by a manager to have the request run on the node that owns the resource.

    Not an error: the service layer hands the same request to ``host``'s own
    queue under the same task id, so the caller gets that node's answer.
    ``extra_hops`` allows that many hand-ons beyond the service layer's limit
    on forwarding (a build rescheduled to its alternates takes one per attempt).
    """

    def __init__(self, host: str, extra_hops: int = 0) -> None:
        super().__init__(host)
        self.host = host
        self.extra_hops = extra_hops
