//! The network seam: everything the engine does with sockets goes through
//! [`Net`], so the engine can run over real TCP or under a network simulator.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

mod faults;

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
    /// The wall clock (ms since the Unix epoch) of the node at `ip`, when the
    /// network simulates one; `None`: the system clock.
    fn wall_clock_ms(&self, _ip: Option<IpAddr>) -> Option<u64> {
        None
    }
}

/// Resolves `host:port` to its first address.
pub(crate) async fn resolve_one(net: &dyn Net, addr: &str) -> crate::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(crate::Error::invalid(format!(
            "address {addr:?} is not host:port"
        )));
    }
    let addrs = net
        .resolve(addr.to_string())
        .await
        .map_err(|e| crate::Error::invalid(format!("cannot resolve {addr:?}: {e}")))?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| crate::Error::invalid(format!("{addr:?} resolves to no address")))
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
            Ok((Box::new(NoSigPipe(stream)) as BoxStream, addr))
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
            Ok(Box::new(NoSigPipe(s)) as BoxStream)
        })
    }
    fn resolve(&self, host_port: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host(host_port).await?.collect()) })
    }
}

/// A TCP stream whose writes never raise `SIGPIPE`. Plain writes go out with
/// `send(MSG_NOSIGNAL)`, but tokio's vectored ones (which TLS uses) with
/// `writev`, which raises `SIGPIPE` on a connection the peer closed: that
/// kills a C host, which (unlike Rust, Python and Node.js programs) does not
/// ignore the signal. Here vectored writes go out with
/// `sendmsg(MSG_NOSIGNAL)` (on other systems than Linux, one buffer at a time).
struct NoSigPipe(tokio::net::TcpStream);

/// `writev` as `sendmsg` with `MSG_NOSIGNAL`.
#[cfg(target_os = "linux")]
fn send_vectored(fd: std::os::fd::RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    const IOV_MAX: usize = 1024;
    // SAFETY: a zeroed msghdr is valid (no name, no control data); `IoSlice`
    // is ABI-compatible with `iovec` on Unix, and the slices outlive the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(IOV_MAX) as _;
        libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for NoSigPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigPipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    #[cfg(target_os = "linux")]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        let stream = &self.0;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let fd = stream.as_raw_fd();
            match stream.try_io(tokio::io::Interest::WRITABLE, || send_vectored(fd, bufs)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
    #[cfg(target_os = "linux")]
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An in-memory network for tests and simulation: listeners and streams live in
/// one process, and links between two IP addresses can be cut silently (bytes
/// vanish, connection attempts hang), as a netsplit does. Give each node its own
/// loopback address (127.0.0.1, 127.0.0.2, ...) to cut it off from the others.
#[derive(Clone, Default)]
pub struct MemNet {
    state: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    listeners: HashMap<SocketAddr, mpsc::UnboundedSender<(BoxStream, SocketAddr)>>,
    next_port: u16,
    cuts: HashSet<(IpAddr, IpAddr)>,
    /// Readers parked on a cut link, woken when links heal.
    parked: Vec<Waker>,
    faults: faults::Faults,
}

impl MemState {
    fn is_cut(&self, a: IpAddr, b: IpAddr) -> bool {
        self.cuts.contains(&ordered(a, b))
    }
}

fn ordered(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl MemNet {
    /// A network with no listener and no cut.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        crate::locks::lock(&self.state)
    }

    /// Cuts the link between `a` and `b` silently, in both directions.
    pub fn cut(&self, a: IpAddr, b: IpAddr) {
        self.lock().cuts.insert(ordered(a, b));
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&self, a: IpAddr, b: IpAddr) {
        let parked = {
            let mut st = self.lock();
            st.cuts.remove(&ordered(a, b));
            std::mem::take(&mut st.parked)
        };
        parked.into_iter().for_each(Waker::wake);
    }
}

/// One end of an in-memory connection between `me` and `peer`.
struct MemStream {
    inner: tokio::io::DuplexStream,
    me: IpAddr,
    peer: IpAddr,
    net: MemNet,
}

impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        {
            let mut st = self.net.lock();
            if st.is_cut(self.me, self.peer) {
                st.parked.push(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.net.lock().is_cut(self.me, self.peer) {
            // A cut link loses what is sent, as a dropped packet would.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct MemListener {
    addr: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<(BoxStream, SocketAddr)>>,
}

impl Listener for MemListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            self.incoming
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "network gone"))
        })
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Net for MemNet {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let mut st = self.lock();
            let mut addr = addr;
            if addr.port() == 0 {
                st.next_port = st.next_port.max(20_000) + 1;
                addr.set_port(st.next_port);
            }
            // A listener whose node is gone frees its address, as a closed socket does.
            if st.listeners.get(&addr).is_some_and(|tx| !tx.is_closed()) {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "address in use"));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            st.listeners.insert(addr, tx);
            Ok(Box::new(MemListener {
                addr,
                incoming: tokio::sync::Mutex::new(rx),
            }) as Box<dyn Listener>)
        })
    }

    fn connect(
        &self,
        local_ip: Option<IpAddr>,
        addr: SocketAddr,
    ) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let me = local_ip.unwrap_or(addr.ip());
            if self.lock().is_cut(me, addr.ip()) {
                // Like a SYN into a firewall: no answer at all.
                self.syn_into_cut(me, addr.ip()).await;
            }
            self.connect_delay(me, addr.ip()).await;
            let listener = self.lock().listeners.get(&addr).cloned();
            let Some(listener) = listener else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "nothing listens there",
                ));
            };
            let (a, b) = tokio::io::duplex(256 * 1024);
            let ours = MemStream {
                inner: a,
                me,
                peer: addr.ip(),
                net: self.clone(),
            };
            let theirs = MemStream {
                inner: b,
                me: addr.ip(),
                peer: me,
                net: self.clone(),
            };
            let from = SocketAddr::new(me, 0);
            let (ours, theirs) = self.shape(ours, theirs);
            listener
                .send((theirs, from))
                .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "listener closed"))?;
            Ok(ours)
        })
    }

    fn resolve(&self, host_port: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            host_port
                .parse::<SocketAddr>()
                .map(|a| vec![a])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        })
    }

    fn wall_clock_ms(&self, ip: Option<IpAddr>) -> Option<u64> {
        self.sim_clock_ms(ip)
    }
}
