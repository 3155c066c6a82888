"""fraud-screen: a Meridian `oms` plugin that holds suspicious orders.

It subscribes to ``platform.oms.order.created`` and, for each order, publishes a decision on
``platform.oms.fraud.decision``::

    {"order_id": "...", "decision": "hold" | "approve", "reason": "..."}

An order is held when its total amount (minor units) is above ``max_amount`` or when it asks
for more than ``max_quantity`` units in all; both come from the plugin's config. Running
counts (screened, held, approved) are kept in the sidecar's durable state, so they survive a
restart of the plugin or of its sidecar.
"""

import os
import signal
import sys

try:
    from meridian_plugin import Sidecar, run
except ImportError:  # run from a Meridian checkout: use the SDK next door
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python")
    )
    from meridian_plugin import Sidecar, run

SUBSCRIPTION = "orders"
ORDER_CREATED = "platform.oms.order.created"
DECISION = "platform.oms.fraud.decision"
COUNTS_KEY = "counts"

DEFAULT_MAX_AMOUNT = 100_000
DEFAULT_MAX_QUANTITY = 50


def decide(order, max_amount, max_quantity):
    """Returns ``(decision, reason)`` for an order (the ``order.created`` event's data)."""
    amount = int((order.get("total") or {}).get("amount", 0))
    quantity = sum(int(line.get("quantity", 0)) for line in order.get("lines") or [])
    if amount > max_amount:
        return "hold", "total amount {} is above {}".format(amount, max_amount)
    if quantity > max_quantity:
        return "hold", "quantity {} is above {}".format(quantity, max_quantity)
    return "approve", "amount {} and quantity {} within limits".format(amount, quantity)


class FraudScreen:
    """The plugin's handler: one decision per order-created event."""

    def __init__(self, sidecar):
        self.sidecar = sidecar
        config = (sidecar.config() or {}).get("config") or {}
        self.max_amount = int(config.get("max_amount", DEFAULT_MAX_AMOUNT))
        self.max_quantity = int(config.get("max_quantity", DEFAULT_MAX_QUANTITY))
        self.counts = sidecar.state_get(COUNTS_KEY, {"screened": 0, "hold": 0, "approve": 0})

    def handle(self, message):
        event = message["event"]
        order = event.get("data") or {}
        decision, reason = decide(order, self.max_amount, self.max_quantity)
        order_id = order.get("id") or event.get("subject")
        self.sidecar.publish(
            DECISION,
            {"order_id": order_id, "decision": decision, "reason": reason},
            tenant=event.get("tenant"),
            subject=order_id,
        )
        for key in ("screened", decision):
            self.counts[key] = self.counts.get(key, 0) + 1
        self.sidecar.state_put(COUNTS_KEY, self.counts)


def main():
    sidecar = Sidecar.from_env()
    sidecar.subscribe(SUBSCRIPTION, ORDER_CREATED, start="earliest")
    screen = FraudScreen(sidecar)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(
        "fraud-screen: max_amount={} max_quantity={} screened so far={}".format(
            screen.max_amount, screen.max_quantity, screen.counts.get("screened", 0)
        ),
        flush=True,
    )
    run(sidecar, SUBSCRIPTION, screen.handle, wait_ms=1000, stop=lambda: bool(stopping))


if __name__ == "__main__":
    main()
