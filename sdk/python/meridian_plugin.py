"""Meridian plugin SDK for Python (3.9+, standard library only).

A Meridian plugin talks to the platform only through its sidecar, a small HTTP server on
127.0.0.1 started next to it by the instance manager. The manager passes the sidecar's
address and the per-instance token in the environment:

- ``MERIDIAN_SIDECAR_URL``   e.g. ``http://127.0.0.1:40117``
- ``MERIDIAN_SIDECAR_TOKEN`` the bearer token for every ``/v1`` request

Install by copying this single module next to the plugin, or by putting its directory on
``PYTHONPATH``. Typical use::

    from meridian_plugin import Sidecar, run

    sidecar = Sidecar.from_env()
    sidecar.subscribe("orders", "platform.oms.order.created", start="earliest")

    def handle(message):
        event = message["event"]
        sidecar.publish("platform.oms.fraud.decision", {"order_id": event["data"]["id"]},
                        tenant=event["tenant"])

    run(sidecar, "orders", handle)

Every error the sidecar answers with (``application/problem+json``) is raised as a
:class:`SidecarError` carrying its ``code`` (``acl_denied``, ``not_found``, ...),
``status`` and ``detail``.
"""

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Sidecar", "SidecarError", "run"]


class SidecarError(Exception):
    """An error answered by the sidecar, or the sidecar could not be reached.

    Attributes:
        status: the HTTP status (0 when the sidecar could not be reached).
        code: the problem's stable code, e.g. ``acl_denied``, ``not_found``,
            ``validation_failed``, ``unauthorized``, ``unavailable`` (``unreachable`` when
            no answer came).
        detail: the human-readable explanation.
        problem: the whole problem document as a dict (may be empty).
    """

    def __init__(self, status, code, detail, problem=None):
        super().__init__("{} {}: {}".format(status, code, detail))
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}


class Sidecar:
    """A client of the plugin's sidecar API.

    Args:
        url: the sidecar's base URL, e.g. ``http://127.0.0.1:40117``.
        token: the per-instance bearer token.
        timeout: seconds to wait for an answer (long polls add their own wait to it).
    """

    def __init__(self, url, token, timeout=30.0):
        if not url:
            raise ValueError("the sidecar URL is empty (MERIDIAN_SIDECAR_URL)")
        if not token:
            raise ValueError("the sidecar token is empty (MERIDIAN_SIDECAR_TOKEN)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls, environ=None, timeout=30.0):
        """Builds a client from ``MERIDIAN_SIDECAR_URL`` and ``MERIDIAN_SIDECAR_TOKEN``."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("MERIDIAN_SIDECAR_URL", ""),
            env.get("MERIDIAN_SIDECAR_TOKEN", ""),
            timeout=timeout,
        )

    # -- transport -------------------------------------------------------------------------

    def _request(self, method, path, body=None, timeout=None, not_found_ok=False):
        """Sends one request; returns ``(status, parsed JSON body or None)``.

        Raises SidecarError for every answer of 400 or more (except 404 when
        ``not_found_ok``) and when the sidecar cannot be reached.
        """
        data = None
        headers = {"Authorization": "Bearer " + self.token, "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, _parse(resp.read())
        except urllib.error.HTTPError as err:
            problem = _parse(err.read()) or {}
            if err.code == 404 and not_found_ok:
                return 404, problem
            if not isinstance(problem, dict):
                problem = {}
            raise SidecarError(
                err.code,
                problem.get("code", "http_{}".format(err.code)),
                problem.get("detail", err.reason),
                problem,
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SidecarError(0, "unreachable", "cannot reach the sidecar: {}".format(reason)) from None

    # -- publish ---------------------------------------------------------------------------

    def publish(self, topic, data, tenant=None, subject=None, type=None, traceparent=None):
        """Publishes ``data`` on ``topic`` (relative to the deployment, or in full).

        ``tenant`` is required for a plugin not bound to a tenant; ``subject`` (the ordering
        key) defaults to the plugin's name. Returns ``{"id": ..., "topic": ...}`` once the
        bus has accepted the event. Raises SidecarError with code ``acl_denied`` (403) when
        the topic lies outside the plugin's ACL: nothing reaches the bus then.
        """
        body = {"topic": topic, "data": data}
        for key, value in (
            ("tenant", tenant),
            ("subject", subject),
            ("type", type),
            ("traceparent", traceparent),
        ):
            if value is not None:
                body[key] = value
        return self._request("POST", "/v1/publish", body)[1]

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(self, name, pattern, start="new"):
        """Creates (or reopens) the durable subscription ``name`` on ``pattern``.

        ``start`` is ``"new"`` or ``"earliest"`` and matters only the first time. Returns
        True when it was created, False when it already existed with the same pattern.
        """
        status, _ = self._request(
            "POST", "/v1/subscriptions", {"name": name, "pattern": pattern, "start": start}
        )
        return status == 201

    def unsubscribe(self, name):
        """Stops the subscription ``name`` and forgets it."""
        self._request("DELETE", "/v1/subscriptions/" + _quote(name))

    def poll(self, name, max=16, wait_ms=10000):
        """Long-polls ``name``: returns a list of messages, empty after ``wait_ms``.

        Each message is ``{"delivery_id", "attempt", "topic", "event"}`` where ``event`` is
        the CloudEvents envelope (``id``, ``tenant``, ``data``, ...). Settle each one with
        :meth:`ack` or :meth:`nack`.
        """
        path = "/v1/subscriptions/{}/messages?max={}&wait_ms={}".format(
            _quote(name), int(max), int(wait_ms)
        )
        timeout = self.timeout + wait_ms / 1000.0
        body = self._request("GET", path, timeout=timeout)[1] or {}
        return body.get("messages", [])

    def ack(self, name, delivery_ids):
        """Acknowledges deliveries: they are never delivered to ``name`` again.

        Returns ``{"settled": n, "unknown": [...]}``.
        """
        return self._request(
            "POST",
            "/v1/subscriptions/{}/ack".format(_quote(name)),
            {"delivery_ids": list(delivery_ids)},
        )[1]

    def nack(self, name, delivery_ids, delay_ms=None):
        """Asks for a redelivery of ``delivery_ids`` after ``delay_ms`` (default 1 s)."""
        body = {"delivery_ids": list(delivery_ids)}
        if delay_ms is not None:
            body["delay_ms"] = int(delay_ms)
        return self._request("POST", "/v1/subscriptions/{}/nack".format(_quote(name)), body)[1]

    # -- state -----------------------------------------------------------------------------

    def state_get(self, key, default=None):
        """Returns the JSON value stored under ``key``, or ``default`` when there is none."""
        status, body = self._request("GET", "/v1/state/" + _quote(key), not_found_ok=True)
        if status == 404:
            return default
        return body["value"]

    def state_put(self, key, value):
        """Stores a JSON value under ``key``; durable once this returns."""
        self._request("PUT", "/v1/state/" + _quote(key), {"value": value})

    def state_delete(self, key):
        """Deletes ``key``; returns False when it did not exist."""
        status, _ = self._request("DELETE", "/v1/state/" + _quote(key), not_found_ok=True)
        return status != 404

    # -- heartbeat and config --------------------------------------------------------------

    def heartbeat(self):
        """Tells the sidecar the plugin is alive (its age shows in /healthz and /metrics)."""
        self._request("POST", "/v1/heartbeat")

    def config(self):
        """Returns ``{"plugin", "version", "pool", "deployment", "tenant", "config"}``."""
        return self._request("GET", "/v1/config")[1]


def run(sidecar, subscription, handler, heartbeat_secs=10.0, max=16, wait_ms=5000,
        nack_delay_ms=None, stop=None):
    """Runs the poll → handle → ack loop on ``subscription`` until ``stop()`` is true.

    ``handler(message)`` is called once per message. When it returns, the message is acked;
    when it raises, the message is nacked (redelivered after ``nack_delay_ms``) and the loop
    goes on. Delivery is at least once, so handlers should be idempotent by
    ``message["event"]["id"]``. A heartbeat is sent at start and every ``heartbeat_secs``.
    Errors reaching the sidecar are retried after a short pause.
    """
    last_beat = None
    while stop is None or not stop():
        try:
            now = time.monotonic()
            if last_beat is None or now - last_beat >= heartbeat_secs:
                sidecar.heartbeat()
                last_beat = now
            wait = min(wait_ms, int(heartbeat_secs * 1000))
            for message in sidecar.poll(subscription, max=max, wait_ms=wait):
                delivery = message["delivery_id"]
                try:
                    handler(message)
                except Exception:  # the handler's failure: redeliver later
                    sidecar.nack(subscription, [delivery], delay_ms=nack_delay_ms)
                else:
                    sidecar.ack(subscription, [delivery])
        except SidecarError as err:
            if err.code in ("unauthorized", "not_found"):
                raise
            time.sleep(1.0)


def _parse(raw):
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        return None


def _quote(segment):
    return urllib.parse.quote(str(segment), safe="")
