//! The shared conformance suite.

/// Every case on the machine's RabbitMQ. That broker is shared with whatever else runs on
/// the machine, so it is never restarted: this fixture has no `restart_broker`, and the
/// `broker_restart` case returns at once here.
mod shared_broker {
    meridian_bus::bus_conformance!(crate::support::shared_broker);
}

/// The broker-restart case on a RabbitMQ node of its own, which the case stops and starts
/// mid-stream.
mod private_broker {
    meridian_bus::bus_conformance!(@cases crate::support::private_broker; broker_restart);
}
