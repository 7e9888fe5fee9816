//! A minimal SMTP sink for tests: a server on 127.0.0.1 that accepts every message
//! and records it, and that can be stopped (the port refuses connections) and
//! started again on the same port, as a mail relay going down and coming back.
//!
//! It speaks just enough SMTP for a client such as lettre: a `220` greeting, `EHLO`
//! / `HELO` (`250`, no extensions: no STARTTLS, no AUTH), `MAIL FROM` and `RCPT TO`
//! (`250`), `DATA` (`354`, then the message up to the `<CRLF>.<CRLF>` line, with
//! dot-stuffing undone, then `250`), `RSET` and `NOOP` (`250`) and `QUIT` (`221`).
//! Anything else gets `502`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::TestkitError;

/// How long [`SmtpSink::stop`] lets sessions in progress finish before cutting them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address, without the angle brackets.
    pub from: String,
    /// The `RCPT TO` addresses, in order, without the angle brackets.
    pub to: Vec<String>,
    /// The message (headers and body) as sent after `DATA`, dot-stuffing undone,
    /// lines joined with CRLF, without the final `.` line.
    pub data: String,
}

impl ReceivedMail {
    /// The value of the first header named `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                break;
            }
            if let Some((key, rest)) = line.split_once(':') {
                if key.trim().eq_ignore_ascii_case(name) {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
        value
    }

    /// The body: everything after the first empty line, as sent.
    pub fn body(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }

    /// The body as text: decoded when its `Content-Transfer-Encoding` is
    /// `quoted-printable` (which clients choose for long lines), else as sent.
    pub fn text(&self) -> String {
        let qp = self
            .header("Content-Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("quoted-printable"));
        if qp {
            decode_quoted_printable(self.body())
        } else {
            self.body().to_owned()
        }
    }
}

/// Quoted-printable (RFC 2045): `=` + CRLF is a soft line break, `=XX` a byte.
fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running (or stopped) SMTP sink. Dropping it stops the server task.
pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    server: Option<Server>,
}

struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Starts a sink on a free port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> Result<SmtpSink, TestkitError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| TestkitError::io("binding the SMTP sink", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("SMTP sink address", e))?;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let server = Some(serve(listener, mails.clone()));
        Ok(SmtpSink {
            addr,
            mails,
            server,
        })
    }

    /// The address it listens on (also while stopped: the port it will come back on).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:<port>`, for a client's connection URL.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Every message received so far, in order of completion.
    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.mails
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Whether the sink is accepting connections.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Stops accepting and closes the port (new connections are refused). Sessions
    /// in progress may finish for a few seconds, then they are cut. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(true);
            let _ = server.task.await;
        }
    }

    /// Starts again on the same port after [`SmtpSink::stop`]; the messages received
    /// before are kept. Does nothing when it is running.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound again (another process took it).
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        if self.server.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await.map_err(|e| {
            TestkitError::io(format!("re-binding the SMTP sink on {}", self.addr), e)
        })?;
        self.server = Some(serve(listener, self.mails.clone()));
        Ok(())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(true);
            server.task.abort();
        }
    }
}

fn serve(listener: TcpListener, mails: Arc<Mutex<Vec<ReceivedMail>>>) -> Server {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        sessions.spawn(session(stream, mails.clone()));
                    }
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
            sessions.abort_all();
        }
    });
    Server { stop, task }
}

/// `<addr>` (and any parameters after it) from `MAIL FROM:<addr> ...`.
fn path_argument(rest: &str) -> String {
    let rest = rest.trim();
    match (rest.find('<'), rest.find('>')) {
        (Some(open), Some(close)) if open < close => rest[open + 1..close].to_owned(),
        _ => rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

async fn session(stream: TcpStream, mails: Arc<Mutex<Vec<ReceivedMail>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write
        .write_all(b"220 slackline-testkit SMTP sink\r\n")
        .await?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-slackline-testkit\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") {
            b"250 slackline-testkit\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path_argument(&command["MAIL FROM:".len()..]));
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                b"503 MAIL first\r\n"
            } else {
                to.push(path_argument(&command["RCPT TO:".len()..]));
                b"250 OK\r\n"
            }
        } else if upper == "DATA" {
            if from.is_none() || to.is_empty() {
                b"503 MAIL and RCPT first\r\n"
            } else {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data: Vec<String> = Vec::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        // Cut mid-message: nothing is recorded.
                        return Ok(());
                    }
                    let text = line.trim_end_matches(['\r', '\n']);
                    if text == "." {
                        break;
                    }
                    data.push(text.strip_prefix('.').unwrap_or(text).to_owned());
                }
                let mail = ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data: data.join("\r\n"),
                };
                match mails.lock() {
                    Ok(mut m) => m.push(mail),
                    Err(poisoned) => poisoned.into_inner().push(mail),
                }
                b"250 OK: queued\r\n"
            }
        } else if upper == "RSET" {
            from = None;
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 Bye\r\n").await?;
            return write.shutdown().await;
        } else {
            b"502 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use lettre::message::Mailbox;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    fn transport(url: &str) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .unwrap()
            .timeout(Some(Duration::from_secs(5)))
            .build()
    }

    fn mail(subject: &str, body: &str) -> Message {
        Message::builder()
            .from(
                "Notifier <notifier@example.com>"
                    .parse::<Mailbox>()
                    .unwrap(),
            )
            .to("a@example.com".parse::<Mailbox>().unwrap())
            .to("b@example.com".parse::<Mailbox>().unwrap())
            .subject(subject)
            .message_id(Some("<fixed-id@test>".to_owned()))
            .body(body.to_owned())
            .unwrap()
    }

    #[tokio::test]
    async fn lettre_delivers_to_the_sink() {
        let sink = SmtpSink::start().await.unwrap();
        let smtp = transport(&sink.url());
        smtp.send(mail("Hello", "line one\r\n.starts with a dot\r\nend"))
            .await
            .unwrap();
        smtp.send(mail("Second", "two")).await.unwrap();
        let mails = sink.mails();
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[0].from, "notifier@example.com");
        assert_eq!(mails[0].to, ["a@example.com", "b@example.com"]);
        assert_eq!(mails[0].header("subject").as_deref(), Some("Hello"));
        assert_eq!(
            mails[0].header("Message-ID").as_deref(),
            Some("<fixed-id@test>")
        );
        assert!(
            mails[0].body().contains("\r\n.starts with a dot\r\n"),
            "dot-stuffing undone: {:?}",
            mails[0].body()
        );
        assert_eq!(mails[1].header("Subject").as_deref(), Some("Second"));
    }

    #[tokio::test]
    async fn long_and_non_ascii_bodies_are_decoded() {
        let sink = SmtpSink::start().await.unwrap();
        let body = format!("{} caf\u{e9} = ok", "x".repeat(120));
        transport(&sink.url())
            .send(mail("Long", &body))
            .await
            .unwrap();
        let mails = sink.mails();
        assert_ne!(mails[0].body(), body, "sent encoded");
        assert_eq!(mails[0].text().trim_end(), body);
    }

    #[tokio::test]
    async fn stopped_sink_refuses_then_comes_back_on_the_same_port() {
        let mut sink = SmtpSink::start().await.unwrap();
        let addr = sink.addr();
        let smtp = transport(&sink.url());
        sink.stop().await;
        assert!(!sink.is_running());
        let err = smtp.send(mail("Down", "x")).await.unwrap_err();
        assert!(!err.is_transient() && !err.is_permanent(), "{err}");
        assert!(sink.mails().is_empty());

        sink.restart().await.unwrap();
        assert_eq!(sink.addr(), addr);
        smtp.send(mail("Back", "y")).await.unwrap();
        let mails = sink.mails();
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].header("subject").as_deref(), Some("Back"));
    }

    #[tokio::test]
    async fn protocol_errors_are_answered() {
        let sink = SmtpSink::start().await.unwrap();
        let stream = TcpStream::connect(sink.addr()).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("220"), "{line}");
        for (command, code) in [
            ("DATA", "503"),
            ("VRFY x", "502"),
            ("NOOP", "250"),
            ("QUIT", "221"),
        ] {
            write
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            assert!(line.starts_with(code), "{command}: {line}");
        }
        assert!(sink.mails().is_empty());
    }
}
