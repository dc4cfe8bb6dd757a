"""The signature check every node runs on the messages it takes (when signing is on).

Every endpoint and periodic task uses :func:`verifying_strategy`: Celery's
default strategy behind a check of ``taskyard_signature`` against the
signing key and every key in ``security.previous_signing_keys`` (so keys
rotate without a flag day), before the message reaches the pool. An
unsigned or altered message is refused: its caller gets ``InvalidRequest``,
and the message goes to the dead-letter list with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.strategy import default as default_strategy

from workers.extensions.refusal import refuse_message
from workers.extensions.signing import body_bytes, verify


def verifying_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's default strategy, behind a signature check when signing is on."""
    handler = default_strategy(task, app, consumer, **kwargs)
    security = app.config.security
    if not security.enabled:
        return handler
    keys = (security.signing_key, *security.previous_signing_keys)

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any,
                             callbacks: Any, **kw: Any) -> Any:
        problem = verify(keys, body_bytes(message.body), message.headers or {})
        if problem is None:
            return handler(message, body, ack, reject, callbacks, **kw)
        refuse_message(app, message, problem, requeueable=False)
        return None

    return task_message_handler
