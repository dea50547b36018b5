//! `sd_notify` for programs that speak it: KUBE binds a datagram socket, names it in the
//! child's `NOTIFY_SOCKET`, and reads `READY=1`, `STOPPING=1` and `STATUS=…` from it (the
//! other assignments of systemd's protocol are ignored). The socket is in the abstract
//! namespace under 128 random bits, so only a process told its name can speak to it, and no
//! file is left behind.

use std::os::linux::net::SocketAddrExt;

/// The longest datagram read; systemd's own limit is a page.
const MAX_DATAGRAM: usize = 4096;
/// The longest `STATUS=` kept.
const MAX_STATUS: usize = 200;

/// What a process told KUBE.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    Ready,
    Stopping,
    Status(String),
}

pub struct NotifySocket {
    sock: tokio::net::UnixDatagram,
    name: String,
}

impl NotifySocket {
    pub fn bind() -> std::io::Result<NotifySocket> {
        let name = format!("kube-notify-{:032x}", rand::random::<u128>());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        sock.set_nonblocking(true)?;
        Ok(NotifySocket {
            sock: tokio::net::UnixDatagram::from_std(sock)?,
            name,
        })
    }

    /// The value of `NOTIFY_SOCKET` (`@` marks the abstract namespace).
    pub fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// The notices of the next datagram; `None` once the socket failed.
    pub async fn recv(&self) -> Option<Vec<Notice>> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = self.sock.recv(&mut buf).await.ok()?;
        Some(parse(&buf[..n]))
    }
}

/// The notices in one datagram: newline-separated `KEY=VALUE` assignments (pure).
pub fn parse(datagram: &[u8]) -> Vec<Notice> {
    let text = String::from_utf8_lossy(datagram);
    text.lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Notice::Ready),
            Some(("STOPPING", "1")) => Some(Notice::Stopping),
            Some(("STATUS", s)) => Some(Notice::Status(
                s.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_STATUS)
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_assignments_kube_uses() {
        assert_eq!(
            parse(b"STATUS=warming up\nREADY=1\nMAINPID=12\nWATCHDOG=1"),
            [Notice::Status("warming up".into()), Notice::Ready]
        );
        assert_eq!(parse(b"READY=0\nSTOPPING=1\n"), [Notice::Stopping]);
        assert_eq!(parse(b"\xff\xfe"), []);
        let long = format!("STATUS={}\x1b[31m", "x".repeat(1000));
        assert_eq!(
            parse(long.as_bytes()),
            [Notice::Status("x".repeat(MAX_STATUS))]
        );
    }

    #[tokio::test]
    async fn a_datagram_to_the_named_socket_arrives() {
        let s = NotifySocket::bind().unwrap();
        let name = s.env_value();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(
            name.strip_prefix('@').unwrap().as_bytes(),
        )
        .unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to_addr(b"READY=1", &addr).unwrap();
        assert_eq!(s.recv().await.unwrap(), [Notice::Ready]);
    }
}
