//! The blocking client stream, for the synchronous migration threads.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::tls::{
    check_answer, hello, refused_or_io, ClientTls, EKM_LEN, EXPORTER_LABEL, MAC_LEN, ST_OK,
};
use crate::{ChannelKind, NetError, Scopes};

/// An authenticated channel as a blocking `Read + Write + Send` stream.
pub struct BlockingStream {
    inner: StreamOwned<ClientConnection, TcpStream>,
    scopes: Scopes,
    peer: String,
}

impl std::fmt::Debug for BlockingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingStream")
            .field("peer", &self.peer)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl BlockingStream {
    pub(crate) fn connect(
        client: &ClientTls,
        addr: &str,
        name: ServerName<'static>,
        kind: ChannelKind,
        timeout: Duration,
    ) -> Result<BlockingStream, NetError> {
        let connect_err = |source| NetError::Connect {
            addr: addr.to_string(),
            source,
        };
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(t), _) => t,
            (None, Some(e)) => return Err(connect_err(e)),
            (None, None) => {
                return Err(connect_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the name resolves to no address",
                )))
            }
        };
        let io = |source| NetError::Io {
            peer: addr.to_string(),
            source,
        };
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(timeout)).map_err(io)?;
        tcp.set_write_timeout(Some(timeout)).map_err(io)?;
        let conn = ClientConnection::new(client.config(), name)
            .map_err(|e| NetError::TlsSetup(e.to_string()))?;
        let mut s = StreamOwned::new(conn, tcp);
        let timed = |source: std::io::Error| {
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                NetError::Timeout {
                    peer: addr.to_string(),
                    stage: "TLS handshake and token binding",
                    timeout,
                }
            } else {
                NetError::Handshake {
                    peer: addr.to_string(),
                    source,
                }
            }
        };
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(timed)?;
        }
        let ekm = s
            .conn
            .export_keying_material([0u8; EKM_LEN], EXPORTER_LABEL, None)
            .map_err(|e| NetError::TlsSetup(e.to_string()))?;
        s.write_all(&hello(client.token(), kind, &ekm))
            .map_err(timed)?;
        s.flush().map_err(timed)?;
        let mut status = [0u8; 1];
        s.read_exact(&mut status).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed(e),
            _ => refused_or_io(addr, e),
        })?;
        let mut rest = [0u8; 1 + MAC_LEN];
        if status[0] == ST_OK {
            s.read_exact(&mut rest).map_err(timed)?;
        }
        let scopes = check_answer(client.token(), kind, &ekm, addr, status[0], &rest)?;
        s.sock.set_read_timeout(None).map_err(io)?;
        s.sock.set_write_timeout(None).map_err(io)?;
        Ok(BlockingStream {
            inner: s,
            scopes,
            peer: addr.to_string(),
        })
    }

    /// The scopes the server granted.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The address dialled.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The TCP socket underneath (for `set_read_timeout`, `shutdown`, ...). Do not read
    /// or write it directly.
    pub fn tcp(&self) -> &TcpStream {
        &self.inner.sock
    }

    /// The rustls stream inside (e.g. to drive the connection by hand).
    pub fn into_inner(self) -> StreamOwned<ClientConnection, TcpStream> {
        self.inner
    }

    /// Ends the channel cleanly: TLS close_notify, then shuts the socket down for
    /// writing. The peer then reads end-of-stream.
    pub fn close(&mut self) -> std::io::Result<()> {
        self.inner.conn.send_close_notify();
        self.inner.flush()?;
        self.inner.sock.shutdown(std::net::Shutdown::Write)
    }
}

impl Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
