//! Email over plain SMTP (RFC 5321) to a relay or a local sink, with failover: providers
//! are tried in order, and the next one takes over when one cannot be reached or answers
//! with a transient (4xx) failure. A permanent (5xx) refusal is not retried elsewhere: the
//! next relay would refuse the same message.
//!
//! A small client of its own: no TLS or authentication (a local relay or sink, as in
//! `meridian dev`), which keeps a TLS stack out of the build.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SMTP relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpProvider {
    /// `host:port`.
    pub address: String,
}

/// Where email goes and who it is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailConfig {
    /// Tried in order; the first is the primary.
    pub providers: Vec<SmtpProvider>,
    /// The envelope sender and `From:` address.
    pub from: String,
    /// The name given in `EHLO`.
    pub hello_name: String,
    /// The longest one exchange (connect, or one command and its reply) may take.
    pub timeout: Duration,
}

/// One email, rendered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Email {
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EmailError {
    /// Every provider was down or answered 4xx: try again later.
    #[error("no provider took the message: {0}")]
    Transient(String),
    /// A provider refused the message for good (5xx).
    #[error("the message was refused: {0}")]
    Permanent(String),
}

/// Sends `email` to `to` through the first provider that takes it; returns which one did.
pub async fn send(config: &EmailConfig, to: &str, email: &Email) -> Result<usize, EmailError> {
    let mut last = String::from("no provider is configured");
    for (i, provider) in config.providers.iter().enumerate() {
        match send_via(config, provider, to, email).await {
            Ok(()) => {
                if i > 0 {
                    tracing::info!(provider = %provider.address, "email sent through a secondary provider");
                }
                return Ok(i);
            }
            Err(Failure::Permanent(e)) => return Err(EmailError::Permanent(e)),
            Err(Failure::Transient(e)) => {
                tracing::warn!(provider = %provider.address, error = %e, "email provider failed; trying the next");
                last = format!("{}: {e}", provider.address);
            }
        }
    }
    Err(EmailError::Transient(last))
}

enum Failure {
    Transient(String),
    Permanent(String),
}

struct Session {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl Session {
    /// Reads one (possibly multi-line) reply: its code and last line.
    async fn reply(&mut self) -> Result<(u16, String), Failure> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.stream.read_line(&mut line))
                .await
                .map_err(|_| Failure::Transient("the server did not answer in time".into()))?
                .map_err(|e| Failure::Transient(format!("read failed: {e}")))?;
            if n == 0 {
                return Err(Failure::Transient(
                    "the server closed the connection".into(),
                ));
            }
            let line = line.trim_end();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| Failure::Transient(format!("not an SMTP reply: {line:?}")))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line.to_owned()));
            }
        }
    }

    /// Sends `command` and expects a reply of class `expect` (2 or 3).
    async fn command(&mut self, command: &str, expect: u16) -> Result<(), Failure> {
        self.write(command.as_bytes()).await?;
        self.write(b"\r\n").await?;
        self.expect(expect).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        tokio::time::timeout(self.timeout, self.stream.get_mut().write_all(bytes))
            .await
            .map_err(|_| Failure::Transient("the server did not take the data in time".into()))?
            .map_err(|e| Failure::Transient(format!("write failed: {e}")))
    }

    async fn expect(&mut self, class: u16) -> Result<(), Failure> {
        let (code, text) = self.reply().await?;
        match code / 100 {
            c if c == class => Ok(()),
            4 => Err(Failure::Transient(text)),
            _ => Err(Failure::Permanent(text)),
        }
    }
}

async fn send_via(
    config: &EmailConfig,
    provider: &SmtpProvider,
    to: &str,
    email: &Email,
) -> Result<(), Failure> {
    let stream = tokio::time::timeout(config.timeout, TcpStream::connect(&provider.address))
        .await
        .map_err(|_| Failure::Transient("connecting timed out".into()))?
        .map_err(|e| Failure::Transient(format!("cannot connect: {e}")))?;
    let mut s = Session {
        stream: BufReader::new(stream),
        timeout: config.timeout,
    };
    s.expect(2).await?;
    s.command(&format!("EHLO {}", header_safe(&config.hello_name)), 2)
        .await?;
    s.command(&format!("MAIL FROM:<{}>", header_safe(&config.from)), 2)
        .await?;
    s.command(&format!("RCPT TO:<{}>", header_safe(to)), 2)
        .await?;
    s.command("DATA", 3).await?;
    s.write(&message(config, to, email)).await?;
    s.expect(2).await?;
    // The message is accepted; a failed QUIT changes nothing.
    let _ = s.command("QUIT", 2).await;
    Ok(())
}

/// Removes what could end a header or an SMTP command early.
fn header_safe(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// An RFC 2047 encoded word when the subject is not plain ASCII.
fn encode_subject(subject: &str) -> String {
    let subject = header_safe(subject);
    if subject.is_ascii() {
        subject
    } else {
        format!("=?utf-8?b?{}?=", STANDARD.encode(subject.as_bytes()))
    }
}

/// The DATA section: headers, the body with CRLF line ends and dot-stuffing, and the
/// terminating `.` line.
fn message(config: &EmailConfig, to: &str, email: &Email) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(&format!("From: <{}>\r\n", header_safe(&config.from)));
    out.push_str(&format!("To: <{}>\r\n", header_safe(to)));
    out.push_str(&format!("Subject: {}\r\n", encode_subject(&email.subject)));
    out.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    out.push_str(&format!(
        "Message-ID: <{}@{}>\r\n",
        uuid_like(),
        header_safe(&config.hello_name)
    ));
    out.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    for line in email.body.replace("\r\n", "\n").split('\n') {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

fn uuid_like() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_dot_stuffed_crlf_and_injection_free() {
        let config = EmailConfig {
            providers: vec![],
            from: "shop@example.com".into(),
            hello_name: "meridian".into(),
            timeout: Duration::from_secs(1),
        };
        let m = String::from_utf8(message(
            &config,
            "a@example.com\r\nBcc: evil@example.com",
            &Email {
                subject: "Grüße".into(),
                body: "one\n.two\nthree".into(),
            },
        ))
        .unwrap();
        assert!(m.contains("To: <a@example.comBcc: evil@example.com>\r\n"));
        assert!(!m.contains("\r\nBcc:"));
        assert!(m.contains("Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"));
        assert!(m.ends_with("\r\n\r\none\r\n..two\r\nthree\r\n.\r\n"));
    }
}
