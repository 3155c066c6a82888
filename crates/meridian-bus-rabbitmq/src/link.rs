//! One AMQP connection at a time, re-established with backoff when it is lost.
//!
//! lapin does not reconnect on its own (its auto-recovery is opt-in and replays a topology
//! we would rather declare ourselves), so a supervisor task owns the connection: it
//! connects, publishes the live [`Link`] on a watch channel, waits until the connection
//! dies, withdraws it and reconnects with exponential backoff. Publishers and subscriptions
//! read the watch: while it holds no link they wait a bounded time and then report
//! `Unavailable`, so nothing blocks forever on a broker that is down.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use meridian_bus::BusError;
use tokio::sync::{Notify, watch};

use crate::error;

/// A live connection and what was set up on it.
pub(crate) struct Link {
    /// Increases with every new connection; subscriptions compare it to notice that the
    /// connection under their channel was replaced.
    pub(crate) generation: u64,
    pub(crate) conn: Connection,
    /// The shared publishing channel, in confirm mode; reopened if the broker closes it (a
    /// channel-level error closes only the channel, not the connection).
    publisher: tokio::sync::Mutex<Option<Channel>>,
    /// Exchanges declared on this connection. Declaring is idempotent but costs a round
    /// trip, so each is declared once per connection (a new connection re-declares, in
    /// case the broker lost non-durable state or an operator deleted it).
    declared: Mutex<HashSet<String>>,
}

impl Link {
    /// The confirm-mode publishing channel, opened on first use and after a channel error.
    pub(crate) async fn publisher(&self) -> Result<Channel, BusError> {
        let mut slot = self.publisher.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = self
            .conn
            .create_channel()
            .await
            .map_err(|e| error::map("open publishing channel", &e))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error::map("enable publisher confirms", &e))?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Declares the durable exchange `name` of `kind` on `ch`, once per connection.
    pub(crate) async fn ensure_exchange(
        &self,
        ch: &Channel,
        name: &str,
        kind: ExchangeKind,
    ) -> Result<(), BusError> {
        if self.is_declared(name) {
            return Ok(());
        }
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
            .map_err(|e| error::map(&format!("declare exchange {name}"), &e))?;
        self.mark_declared(name);
        Ok(())
    }

    pub(crate) fn is_declared(&self, name: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    pub(crate) fn mark_declared(&self, name: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }

    /// Forgets what was declared, after the broker said something we declared is gone.
    pub(crate) fn forget_declared(&self) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.conn.status().connected()
    }
}

/// What the supervisor currently offers.
#[derive(Clone)]
pub(crate) enum State {
    /// Connecting or reconnecting.
    Down,
    Up(Arc<Link>),
    /// [`Connector::close`] was called: no more connections.
    Closed,
}

/// Reconnection timing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) connect_timeout: Duration,
}

/// The shared handle to the supervised connection.
pub(crate) struct Connector {
    state: watch::Receiver<State>,
    /// Wakes the supervisor to check its connection now (an operation saw it fail).
    kick: Arc<Notify>,
    shutdown: Arc<Notify>,
}

impl Connector {
    /// Connects once (so a wrong URL or a down broker fails the caller at start-up) and
    /// hands the connection to a supervisor task that keeps one alive from then on.
    pub(crate) async fn start(
        url: String,
        name: String,
        timing: Timing,
    ) -> Result<Connector, BusError> {
        let first = connect(&url, &name, timing.connect_timeout).await?;
        let (tx, rx) = watch::channel(State::Down);
        let kick = Arc::new(Notify::new());
        let shutdown = Arc::new(Notify::new());
        tokio::spawn(supervise(
            url,
            name,
            timing,
            first,
            tx,
            kick.clone(),
            shutdown.clone(),
        ));
        let connector = Connector {
            state: rx,
            kick,
            shutdown,
        };
        // The supervisor publishes the first link at once; wait for it so the bus is usable
        // as soon as `start` returns.
        connector.link(timing.connect_timeout).await?;
        Ok(connector)
    }

    /// The live link, waiting up to `wait` for one while the broker is unreachable.
    pub(crate) async fn link(&self, wait: Duration) -> Result<Arc<Link>, BusError> {
        let mut rx = self.state.clone();
        let found = tokio::time::timeout(wait, async {
            loop {
                let current = rx.borrow_and_update().clone();
                match current {
                    State::Up(link) if link.is_alive() => return Ok(link),
                    // The supervisor has not noticed yet that this connection died: tell
                    // it, and wait for the next one.
                    State::Up(_) => self.kick(),
                    State::Down => {}
                    State::Closed => return Err(BusError::Closed),
                }
                if rx.changed().await.is_err() {
                    return Err(BusError::Closed);
                }
            }
        })
        .await;
        match found {
            Ok(result) => result,
            // `timeout` polls the future once even with a zero wait, so a live link is
            // always found; only a missing one times out.
            Err(_) => Err(BusError::Unavailable(format!(
                "rabbitmq unreachable (waited {wait:?}); reconnecting in the background"
            ))),
        }
    }

    /// A receiver to watch for the link being replaced.
    pub(crate) fn watch(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Asks the supervisor to check the connection now.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), State::Closed)
    }

    /// Stops reconnecting and closes the connection.
    pub(crate) fn close(&self) {
        self.shutdown.notify_one();
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // The bus is gone: nobody will use the connection again. Subscriptions hold the
        // bus's shared state, so this runs only once they are gone too.
        self.shutdown.notify_one();
    }
}

async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Connection, BusError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(timeout, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(BusError::Unavailable(format!(
            "rabbitmq connect to {}: {e}",
            redact(url)
        ))),
        Err(_) => Err(BusError::Unavailable(format!(
            "rabbitmq connect to {}: no answer within {timeout:?}",
            redact(url)
        ))),
    }
}

/// The URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn supervise(
    url: String,
    name: String,
    timing: Timing,
    first: Connection,
    tx: watch::Sender<State>,
    kick: Arc<Notify>,
    shutdown: Arc<Notify>,
) {
    let mut generation = 0u64;
    let mut next = Some(first);
    let mut backoff = timing.backoff_min;
    loop {
        let conn = match next.take() {
            Some(conn) => conn,
            None => {
                let attempt = tokio::select! {
                    r = connect(&url, &name, timing.connect_timeout) => r,
                    _ = shutdown.notified() => break,
                };
                match attempt {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "rabbitmq reconnect failed");
                        tokio::select! {
                            _ = tokio::time::sleep(jitter(backoff)) => {}
                            _ = shutdown.notified() => break,
                        }
                        backoff = (backoff * 2).min(timing.backoff_max);
                        continue;
                    }
                }
            }
        };
        generation += 1;
        if generation > 1 {
            tracing::info!(generation, "rabbitmq reconnected");
        }
        backoff = timing.backoff_min;
        let link = Arc::new(Link {
            generation,
            conn,
            publisher: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashSet::new()),
        });
        tx.send_replace(State::Up(link.clone()));
        let closing = wait_until_dead(&link, &kick, &shutdown).await;
        tx.send_replace(State::Down);
        if closing {
            // Best effort: the process is letting go of the bus.
            let _ = link.conn.close(200, "bus closed".into()).await;
            break;
        }
        tracing::warn!(generation, "rabbitmq connection lost; reconnecting");
    }
    tx.send_replace(State::Closed);
}

/// Returns when the link's connection is dead (false) or shutdown was asked for (true).
async fn wait_until_dead(link: &Link, kick: &Notify, shutdown: &Notify) -> bool {
    let mut events = link.conn.events_listener();
    // Events say promptly when the connection fails; the periodic check covers a close
    // that produces no event, and a kick lets an operation that saw a failure skip the
    // wait.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => {
                    tracing::debug!(error = %e, "rabbitmq connection error event");
                    if !link.is_alive() {
                        return false;
                    }
                }
                Some(_) => {}
                None => return false,
            },
            _ = tick.tick() => {}
            _ = kick.notified() => {}
            _ = shutdown.notified() => return true,
        }
        if !link.is_alive() {
            return false;
        }
    }
}

/// A delay in `[d/2, d]`, so that many clients do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
