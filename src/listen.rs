//! Listening sockets handed over by a supervisor: `eventsys up` (or systemd) binds the port
//! itself and passes the socket as fd 3 with `LISTEN_FDS=1`, so a restarted server keeps its
//! port by construction; a second socket (fd 4, `LISTEN_FDS=2`) is for a backend's metrics.
//! Without them, a server binds its own.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The socket a supervisor handed over, if any. Taken before any thread starts: reading it
/// clears `LISTEN_FDS` from the environment.
#[derive(Debug)]
pub struct Inherited {
    serve: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
}

impl Inherited {
    /// Takes the handed-over socket; an error if `LISTEN_FDS` names one that is not a TCP
    /// listener.
    pub fn take() -> std::io::Result<Inherited> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(Inherited::none());
        }
        let serve = fds.take_tcp_listener(0)?.ok_or_else(|| {
            std::io::Error::other("LISTEN_FDS is set but fd 3 is not a TCP listener")
        })?;
        let metrics = match fds.len() {
            1 => None,
            _ => Some(fds.take_tcp_listener(1)?.ok_or_else(|| {
                std::io::Error::other("LISTEN_FDS is 2 but fd 4 is not a TCP listener")
            })?),
        };
        Ok(Inherited {
            serve: Some(serve),
            metrics,
        })
    }

    /// No socket handed over: the server binds its own.
    pub fn none() -> Inherited {
        Inherited {
            serve: None,
            metrics: None,
        }
    }

    /// The socket handed over for metrics, if any.
    pub fn take_metrics(&mut self) -> std::io::Result<Option<TcpListener>> {
        self.metrics
            .take()
            .map(|listener| {
                listener.set_nonblocking(true)?;
                TcpListener::from_std(listener)
            })
            .transpose()
    }

    /// The handed-over socket, or a new one bound to `addr`. The flag says which.
    pub async fn listen(self, addr: SocketAddr) -> std::io::Result<(TcpListener, Origin)> {
        match self.serve {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                Ok((TcpListener::from_std(listener)?, Origin::Inherited))
            }
            None => Ok((TcpListener::bind(addr).await?, Origin::Bound)),
        }
    }
}

/// Where a server's listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Handed over by the supervisor (`--host` / `--port` are then not used).
    Inherited,
    /// Bound by the server itself.
    Bound,
}
