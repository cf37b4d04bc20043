//! Faults of the in-memory network beyond silent cuts, for deterministic
//! simulation: per-link delay with jitter, loss (a lost segment costs a
//! retransmission timeout, as on TCP, and holds up what follows it), stalls
//! (nothing is delivered until the stall ends, nothing is lost), connection
//! resets, SYN retransmission into cut links, and a simulated wall clock with
//! a per-node skew.
//!
//! All of it is off on a [`MemNet::new`] network, which behaves as before. A
//! [`MemNet::seeded`] network sends every byte through a delivery queue per
//! direction of each connection (a task that hands bytes to the other end when
//! they are due), and draws jitter and losses from its own seeded generator,
//! so that under a current-thread runtime with paused time one seed gives one
//! run.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ordered, BoxStream, MemNet, MemStream};

/// Retransmission timeout that one lost segment costs.
const LOSS_RTO: Duration = Duration::from_millis(200);

/// The fault state of a [`MemNet`].
#[derive(Default)]
pub(super) struct Faults {
    /// Connections go through delivery queues (set by [`MemNet::seeded`]).
    shaped: bool,
    rng: Option<StdRng>,
    links: HashMap<(IpAddr, IpAddr), Link>,
    clock: Option<SimClock>,
}

/// What is wrong with the link between two addresses (both directions).
#[derive(Clone, Copy, Default)]
struct Link {
    delay: Duration,
    jitter: Duration,
    loss: f64,
    stall_until: Option<Instant>,
    /// Bumped by [`MemNet::reset`]: connections of an older generation fail.
    generation: u64,
}

struct SimClock {
    base_ms: u64,
    start: Instant,
    skew_ms: HashMap<IpAddr, i64>,
}

impl MemNet {
    /// A network whose links can also be slowed, stalled, made lossy and reset,
    /// with randomness drawn from `seed`. Every connection goes through a
    /// delivery queue (a task per direction), so it must be used from inside a
    /// tokio runtime. Without faults set it behaves as [`MemNet::new`].
    pub fn seeded(seed: u64) -> Self {
        let net = MemNet::new();
        {
            let mut st = net.lock();
            st.faults.shaped = true;
            st.faults.rng = Some(StdRng::seed_from_u64(seed));
        }
        net
    }

    fn with_link<R>(&self, a: IpAddr, b: IpAddr, f: impl FnOnce(&mut Link) -> R) -> R {
        let mut st = self.lock();
        f(st.faults.links.entry(ordered(a, b)).or_default())
    }

    /// Bytes between `a` and `b` take `delay` plus up to `jitter` more (drawn
    /// per write, order kept). Needs a [`MemNet::seeded`] network.
    pub fn set_delay(&self, a: IpAddr, b: IpAddr, delay: Duration, jitter: Duration) {
        self.with_link(a, b, |l| {
            l.delay = delay;
            l.jitter = jitter;
        });
    }

    /// Each write between `a` and `b` is lost with probability `p` and then
    /// delivered a retransmission timeout (200 ms) late, holding up what
    /// follows it, as TCP does. Needs a [`MemNet::seeded`] network.
    pub fn set_loss(&self, a: IpAddr, b: IpAddr, p: f64) {
        self.with_link(a, b, |l| l.loss = p.clamp(0.0, 1.0));
    }

    /// Nothing is delivered between `a` and `b` for `duration` (from now);
    /// what is sent meanwhile arrives when the stall ends. Needs a
    /// [`MemNet::seeded`] network.
    pub fn stall(&self, a: IpAddr, b: IpAddr, duration: Duration) {
        let until = Instant::now() + duration;
        self.with_link(a, b, |l| {
            l.stall_until = Some(l.stall_until.map_or(until, |u| u.max(until)));
        });
    }

    /// Every connection between `a` and `b` fails on both ends, as a reset
    /// does: writes fail at once, and each end reads the end of the stream
    /// as soon as the other end sends anything more. New connections work.
    /// Needs a [`MemNet::seeded`] network.
    pub fn reset(&self, a: IpAddr, b: IpAddr) {
        self.with_link(a, b, |l| l.generation += 1);
    }

    /// Removes the delay, loss and stall of the link between `a` and `b`
    /// (not a cut: see [`MemNet::heal`]).
    pub fn clear_link(&self, a: IpAddr, b: IpAddr) {
        self.with_link(a, b, |l| {
            *l = Link {
                generation: l.generation,
                ..Link::default()
            }
        });
    }

    /// From now on nodes on this network read a simulated wall clock (the
    /// timestamps of clock dots and the tombstone cutoff): `base_ms` plus the
    /// tokio time elapsed since this call (paused time, under a simulator),
    /// plus the skew of the node's address.
    pub fn set_clock(&self, base_ms: u64) {
        self.lock().faults.clock = Some(SimClock {
            base_ms,
            start: Instant::now(),
            skew_ms: HashMap::new(),
        });
    }

    /// The clock of the node at `ip` runs `skew_ms` ahead (behind, when
    /// negative) of the simulated wall clock set by [`MemNet::set_clock`].
    pub fn set_skew(&self, ip: IpAddr, skew_ms: i64) {
        if let Some(c) = self.lock().faults.clock.as_mut() {
            c.skew_ms.insert(ip, skew_ms);
        }
    }

    /// The simulated wall clock of the node at `ip`, if [`MemNet::set_clock`] was called.
    pub(super) fn sim_clock_ms(&self, ip: Option<IpAddr>) -> Option<u64> {
        let st = self.lock();
        let c = st.faults.clock.as_ref()?;
        let elapsed = Instant::now()
            .saturating_duration_since(c.start)
            .as_millis() as i64;
        let skew = ip.and_then(|ip| c.skew_ms.get(&ip)).copied().unwrap_or(0);
        Some((c.base_ms as i64 + elapsed + skew).max(0) as u64)
    }

    /// A connection attempt into a cut link: no answer at all. On a seeded
    /// network the SYN is sent again as TCP does (after 1 s, then 2 s, 4 s...),
    /// so the attempt goes through at the first retransmission after the link
    /// heals; otherwise it hangs for good.
    pub(super) async fn syn_into_cut(&self, a: IpAddr, b: IpAddr) {
        if !self.lock().faults.shaped {
            std::future::pending::<()>().await;
        }
        let mut wait = Duration::from_secs(1);
        while self.lock().is_cut(a, b) {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// Waits as long as opening a connection from `a` to `b` takes: a round
    /// trip, and the end of a stall.
    pub(super) async fn connect_delay(&self, a: IpAddr, b: IpAddr) {
        loop {
            let (shaped, link) = {
                let st = self.lock();
                let link = st.faults.links.get(&ordered(a, b)).copied();
                (st.faults.shaped, link.unwrap_or_default())
            };
            if !shaped {
                return;
            }
            match link.stall_until.filter(|u| *u > Instant::now()) {
                Some(until) => tokio::time::sleep_until(until).await,
                None => {
                    if !link.delay.is_zero() {
                        tokio::time::sleep(link.delay * 2).await;
                    }
                    return;
                }
            }
        }
    }

    /// Puts both ends of a new connection behind delivery queues when the
    /// network is [`MemNet::seeded`]; returns them unchanged otherwise.
    pub(super) fn shape(&self, ours: MemStream, theirs: MemStream) -> (BoxStream, BoxStream) {
        if !self.lock().faults.shaped {
            return (Box::new(ours), Box::new(theirs));
        }
        (
            Box::new(Shaped::new(self.clone(), ours)),
            Box::new(Shaped::new(self.clone(), theirs)),
        )
    }

    /// When a write between `a` and `b` made now is due at the other end,
    /// given that the previous one was due at `last`.
    fn due(&self, a: IpAddr, b: IpAddr, last: Instant) -> Instant {
        let mut st = self.lock();
        let link = st
            .faults
            .links
            .get(&ordered(a, b))
            .copied()
            .unwrap_or_default();
        let mut extra = link.delay;
        if let Some(rng) = st.faults.rng.as_mut() {
            if !link.jitter.is_zero() {
                extra += link.jitter.mul_f64(rng.random::<f64>());
            }
            if link.loss > 0.0 && rng.random_bool(link.loss) {
                extra += LOSS_RTO;
            }
        }
        (Instant::now() + extra).max(last)
    }

    fn generation(&self, a: IpAddr, b: IpAddr) -> u64 {
        self.lock()
            .faults
            .links
            .get(&ordered(a, b))
            .map_or(0, |l| l.generation)
    }

    fn stalled_until(&self, a: IpAddr, b: IpAddr) -> Option<Instant> {
        self.lock()
            .faults
            .links
            .get(&ordered(a, b))
            .and_then(|l| l.stall_until)
            .filter(|u| *u > Instant::now())
    }
}

/// One end of a connection on a seeded network: reads come straight from the
/// in-memory stream; writes go to a queue that a task delivers when due.
struct Shaped {
    net: MemNet,
    me: IpAddr,
    peer: IpAddr,
    generation: u64,
    rd: ReadHalf<MemStream>,
    queue: Option<mpsc::UnboundedSender<(Instant, Vec<u8>)>>,
    last_due: Instant,
}

impl Shaped {
    fn new(net: MemNet, stream: MemStream) -> Self {
        let (me, peer) = (stream.me, stream.peer);
        let generation = net.generation(me, peer);
        let (rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver(net.clone(), me, peer, generation, wr, rx));
        Shaped {
            net,
            me,
            peer,
            generation,
            rd,
            queue: Some(tx),
            last_due: Instant::now(),
        }
    }

    fn is_reset(&self) -> bool {
        self.net.generation(self.me, self.peer) != self.generation
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset")
}

/// Hands the queued writes of one direction to the other end when they are due.
async fn deliver(
    net: MemNet,
    me: IpAddr,
    peer: IpAddr,
    generation: u64,
    mut wr: WriteHalf<MemStream>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) {
    while let Some((due, bytes)) = rx.recv().await {
        if bytes.is_empty() {
            // The writer shut its side down: the peer reads the end after the rest.
            let _ = wr.shutdown().await;
            return;
        }
        tokio::time::sleep_until(due).await;
        while let Some(until) = net.stalled_until(me, peer) {
            tokio::time::sleep_until(until).await;
        }
        if net.generation(me, peer) != generation {
            // Reset: the other end reads the end of the stream now.
            let _ = wr.shutdown().await;
            return;
        }
        if wr.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

impl AsyncRead for Shaped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shaped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let due = self.net.due(self.me, self.peer, self.last_due);
        self.last_due = due;
        match self.queue.as_ref() {
            Some(q) if q.send((due, buf.to_vec())).is_ok() => Poll::Ready(Ok(buf.len())),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(q) = self.queue.take() {
            let _ = q.send((Instant::now(), Vec::new()));
        }
        Poll::Ready(Ok(()))
    }
}
