//! Outbound HTTP against real local servers.

mod tls;
