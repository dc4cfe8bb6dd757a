"""Authenticated messages and the size limit, on both ends of the wire.

Sending: every task message of an app goes through :class:`GuardedAMQP`,
which refuses a body larger than ``max_message_bytes`` (``InvalidRequest``
in the caller, nothing sent) and, when ``security.signing_key`` is set,
adds ``taskyard_signature``: an HMAC-SHA256 over the serialized body and
the canonical JSON of every other header. Forwarded requests, handed-on
work and periodic runs are signed the same way, since they are sent
through the same app. What a ``before_task_publish`` receiver writes into
the headers (a tracing tool's trace context) is signed too: the client signs
again once its receivers ran (:mod:`workers.extensions.publishing`), and
Celery's task sender, which sends that signal after this module sealed the
message, has it signed again as it publishes (:class:`_Resealing`).

Receiving: :mod:`workers.extensions.strategy` checks the signature of every
message a node takes (see there).

:class:`GuardedAMQP` overrides ``AMQP._create_task_sender``, a private
method of Celery 5.7 (``tests/unit/test_canaries.py`` fails when its shape
changes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

from celery import signals
from celery.app.amqp import AMQP
from kombu.serialization import dumps as kombu_dumps

from workers.exceptions import InvalidRequest

SIGNATURE_HEADER = "taskyard_signature"
_SCHEME = "v1"


def canonical_headers(headers: dict[str, Any]) -> bytes:
    """The headers as the node will read them (a JSON round trip), sorted, without the signature."""
    plain = json.loads(json.dumps(
        {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}, default=str))
    return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()


def sign(key: str, body: bytes, headers: dict[str, Any]) -> str:
    mac = hmac.new(key.encode(), digestmod=hashlib.sha256)
    mac.update(len(body).to_bytes(8, "big"))
    mac.update(body)
    mac.update(canonical_headers(headers))
    return f"{_SCHEME}:{mac.hexdigest()}"


def verify(keys: Iterable[str], body: bytes, headers: dict[str, Any]) -> str | None:
    """None when one of ``keys`` signed this message; otherwise why it is refused."""
    given = headers.get(SIGNATURE_HEADER)
    if not given:
        return "unsigned message: this fleet requires signed messages (security.signing_key)"
    if not isinstance(given, str) or not given.startswith(f"{_SCHEME}:"):
        return "unreadable signature"
    for key in keys:
        if hmac.compare_digest(given, sign(key, body, headers)):
            return None
    return "bad signature: the message was altered, or signed with a key this node does not have"


def body_bytes(body: Any) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def seal(config: Any, name: str, headers: dict[str, Any], body: Any,
         serializer: str = "json", payload: bytes | None = None) -> bytes:
    """Refuse a body over ``max_message_bytes``; sign ``headers`` when signing is on.

    Returns the serialized body, which a caller may publish as it is; one
    that sends the same body many times (a fanout) serializes it once and
    passes it as ``payload``.
    """
    if payload is None:
        _, _, data = kombu_dumps(body, serializer=serializer)
        payload = body_bytes(data)
    limit = config.max_message_bytes
    if len(payload) > limit:
        raise InvalidRequest(
            f"{name}: the request is {len(payload)} bytes, more than max_message_bytes "
            f"({limit}); send a reference to the data instead of the data",
            {"argument": None},
        )
    if config.security.signing_key:
        headers[SIGNATURE_HEADER] = sign(config.security.signing_key, payload, headers)
    return payload


class GuardedAMQP(AMQP):
    """Celery's AMQP helper whose task sender checks size and signs (see module doc)."""

    def _create_task_sender(self) -> Callable[..., Any]:
        send = super()._create_task_sender()
        config = self.app.config
        serializer = self.app.conf.task_serializer

        def send_task_message(producer: Any, name: str, message: Any, **kwargs: Any) -> Any:
            headers, _, body, _ = message
            extra = kwargs.pop("headers", None)
            if extra:
                headers.update(extra)
            payload = seal(config, name, headers, body, kwargs.get("serializer") or serializer)
            if config.security.signing_key and (
                    signals.before_task_publish.receivers or signals.after_task_publish.receivers):
                # Celery sends before_task_publish after this point, and its receivers may
                # add headers (a trace context): sign again when the message is published.
                producer = _Resealing(producer, config, name, headers, payload)
            return send(producer, name, message, **kwargs)

        return send_task_message


class _Resealing:
    """A producer that signs its task message again as it publishes it.

    Celery's task sender sends ``before_task_publish`` between sealing
    (above) and ``producer.publish``; what its receivers wrote into the
    headers is signed here. Any other publish (a task-sent event) passes
    through unchanged.
    """

    def __init__(self, producer: Any, config: Any, name: str, headers: dict[str, Any],
                 payload: bytes) -> None:
        self._producer = producer
        self._config = config
        self._name = name
        self._headers = headers
        self._payload = payload

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("headers") is self._headers:
            seal(self._config, self._name, self._headers, body, payload=self._payload)
        return self._producer.publish(body, *args, **kwargs)
