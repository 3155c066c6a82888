//! Integration tests of the RabbitMQ backend, against a real RabbitMQ: the machine's
//! (`MERIDIAN_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`) and, for
//! broker restarts, private nodes the tests start themselves. A missing broker fails the
//! tests; it never skips them.

mod conformance;
mod rabbitmq;
mod support;
