//! The network seam: everything the engine does with sockets goes through
//! [`Net`], so the engine can run over real TCP or under a network simulator.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a peer.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A boxed stream.
pub type BoxStream = Box<dyn Stream>;
/// A boxed future, the return type of the seam's async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bound listening socket.
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next incoming connection.
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// How the engine reaches the network.
pub trait Net: Send + Sync + 'static {
    /// Binds a listener.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>>;
    /// Opens a stream to `addr` (with `TCP_NODELAY`), from `local_ip` when given,
    /// so that a node's traffic comes from the address it listens on (which is
    /// what lets firewall rules cut one node off from another on one host).
    fn connect(
        &self,
        local_ip: Option<IpAddr>,
        addr: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>>;
    /// Resolves `host:port` to all its addresses.
    fn resolve(&self, host_port: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>>;
}

/// Real TCP through tokio.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpNet;

struct TcpListener(tokio::net::TcpListener);

impl Listener for TcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, addr) = self.0.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxStream, addr))
        })
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Net for TcpNet {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TcpListener(l)) as Box<dyn Listener>)
        })
    }
    fn connect(
        &self,
        local_ip: Option<IpAddr>,
        addr: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(ip) = local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let s = socket.connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
    }
    fn resolve(&self, host_port: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.collect()) })
    }
}
