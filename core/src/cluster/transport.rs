//! Peer connections: framing, the reader and writer tasks of each connection
//! (which tag every frame they send and check the tag of every frame they
//! receive), heartbeats and the silence that counts as failure. What the
//! frames mean is left to [`ConnectionEvents`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::auth::{FrameKey, Session, TAG_LEN};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::flow::Share;
use crate::locks::lock;
use crate::net::BoxStream;
use crate::vclock::ActorId;
use crate::wire::{self, Message};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// What a connection reports upward.
pub(crate) trait ConnectionEvents: Send + Sync {
    /// A message arrived.
    fn on_message(&self, peer: &Arc<PeerConn>, msg: Message);
    /// The connection ended: closed, broken, silent too long, or sent garbage.
    fn on_lost(&self, peer: &PeerConn, reason: &str);
}

/// One authenticated connection to a peer.
pub(crate) struct PeerConn {
    pub actor: ActorId,
    pub listen: String,
    /// Unique per connection, so a replaced connection's leftovers are told apart.
    pub conn_id: u64,
    /// Whether the smaller of the two actors dialed it (the one both keep
    /// when they dial each other at once).
    pub initiated_by_smaller: bool,
    ctx: Arc<Context>,
    tx: Mutex<Option<mpsc::UnboundedSender<Arc<[u8]>>>>,
    /// Bytes queued for the writer and not yet handed to the socket.
    queued: Arc<AtomicUsize>,
    /// The write budget held by the peer's write requests until they are answered.
    shares: Mutex<HashMap<u64, Share>>,
    tasks: Mutex<Vec<AbortHandle>>,
    writer_done: watch::Receiver<bool>,
    synced: watch::Sender<bool>,
    /// Merge rounds this node asked for on this connection (run here when this
    /// node initiates merges on it, else asked of the peer).
    pub rounds_asked: AtomicU64,
    /// Merge rounds the peer asked of this node.
    pub rounds_asked_by_peer: AtomicU64,
    /// How many of this node's asked-for rounds are done.
    pub rounds_done: watch::Sender<u64>,
    /// When the connection began; `last_frame_us` counts from it.
    born: tokio::time::Instant,
    /// Microseconds from `born` to the last frame read.
    last_frame_us: AtomicU64,
    /// The last probe round trip in microseconds (0: none measured).
    round_trip_us: AtomicU64,
}

/// A connection whose reader and writer have not started yet.
pub(crate) struct Unstarted {
    rd: ReadHalf<BoxStream>,
    wr: WriteHalf<BoxStream>,
    rx: mpsc::UnboundedReceiver<Arc<[u8]>>,
    done: watch::Sender<bool>,
    session: Session,
}

impl PeerConn {
    /// Wraps an authenticated stream and the keys its handshake gave;
    /// [`PeerConn::start`] starts its tasks.
    pub fn new(
        ctx: &Arc<Context>,
        actor: ActorId,
        listen: String,
        initiated_by_smaller: bool,
        stream: BoxStream,
        session: Session,
    ) -> (Arc<PeerConn>, Unstarted) {
        let (rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        let (done, writer_done) = watch::channel(false);
        let peer = Arc::new(PeerConn {
            actor,
            listen,
            conn_id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            initiated_by_smaller,
            ctx: ctx.clone(),
            tx: Mutex::new(Some(tx)),
            queued: Arc::new(AtomicUsize::new(0)),
            shares: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            writer_done,
            synced: watch::channel(false).0,
            rounds_asked: AtomicU64::new(0),
            rounds_asked_by_peer: AtomicU64::new(0),
            rounds_done: watch::channel(0).0,
            born: tokio::time::Instant::now(),
            last_frame_us: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(0),
        });
        (
            peer,
            Unstarted {
                rd,
                wr,
                rx,
                done,
                session,
            },
        )
    }

    /// Starts the reader and writer, which report to `events`.
    pub fn start(self: &Arc<Self>, io: Unstarted, events: Weak<dyn ConnectionEvents>) {
        let Session { send, receive } = io.session;
        let r =
            tokio::spawn(run_reader(events.clone(), self.clone(), io.rd, receive)).abort_handle();
        let w = tokio::spawn(run_writer(
            events,
            self.clone(),
            io.rx,
            io.wr,
            io.done,
            send,
        ))
        .abort_handle();
        lock(&self.tasks).extend([r, w]);
    }

    /// Queues `msg` for this peer; a closed connection drops it silently (its
    /// waiters learn of the loss when the connection is reported lost).
    pub fn send(&self, msg: &Message) {
        if let Message::WriteReply { id, .. } = msg {
            // Answered: the request's share of the write budget is free again.
            lock(&self.shares).remove(id);
        }
        match wire::encode_frame(msg) {
            Ok(frame) => self.send_frame(frame.into()),
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    /// Queues an encoded frame.
    pub fn send_frame(&self, frame: Arc<[u8]>) {
        let len = frame.len();
        if self.enqueue(frame) {
            self.ctx
                .stats
                .bytes_sent
                .fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// Queues a small control message that traffic statistics leave out.
    pub fn send_control(&self, msg: &Message) {
        match wire::encode_frame(msg) {
            Ok(frame) => {
                self.enqueue(frame.into());
            }
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    fn enqueue(&self, frame: Arc<[u8]>) -> bool {
        let len = frame.len();
        let Some(tx) = lock(&self.tx).as_ref().cloned() else {
            return false;
        };
        self.queued.fetch_add(len, Ordering::Relaxed);
        if tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// How long ago the last frame from the peer arrived (since the
    /// connection began, when none has).
    pub fn since_last_frame(&self) -> std::time::Duration {
        let at = self.born
            + std::time::Duration::from_micros(self.last_frame_us.load(Ordering::Relaxed));
        tokio::time::Instant::now().saturating_duration_since(at)
    }

    /// A probe to the peer was answered after `rtt`.
    pub fn note_round_trip(&self, rtt: std::time::Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.round_trip_us.store(us, Ordering::Relaxed);
    }

    /// The last probe round trip in microseconds, if one was measured.
    pub fn round_trip_us(&self) -> Option<u64> {
        Some(self.round_trip_us.load(Ordering::Relaxed)).filter(|us| *us > 0)
    }

    /// Bytes queued for this peer and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Keeps the share of the write budget taken by the peer's write request
    /// `id` until the request is answered (or the connection is gone).
    pub fn hold_share(&self, id: u64, share: Share) {
        lock(&self.shares).insert(id, share);
    }

    /// The first merge after connecting finished.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Whether the first merge after connecting finished.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Whether the connection is closed for sending.
    pub fn is_closed(&self) -> bool {
        lock(&self.tx).is_none()
    }

    /// Sends what is queued, then closes the connection for sending.
    pub fn finish(&self) {
        lock(&self.tx).take();
    }

    /// Waits until the writer sent everything queued before [`PeerConn::finish`].
    pub async fn flushed(&self) {
        let mut done = self.writer_done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Ends the connection at once.
    pub fn abort(&self) {
        lock(&self.tx).take();
        for t in lock(&self.tasks).iter() {
            t.abort();
        }
        // Requests of a connection that is gone are never answered on it.
        lock(&self.shares).clear();
    }
}

async fn run_reader(
    events: Weak<dyn ConnectionEvents>,
    peer: Arc<PeerConn>,
    rd: ReadHalf<BoxStream>,
    mut key: FrameKey,
) {
    let failure_timeout = peer.ctx.config.failure_timeout;
    let max_frame = peer.ctx.config.max_frame_size;
    // Buffered, so that one read takes in every frame that arrived at once.
    // The failure timeout bounds the silence between two reads that bring
    // bytes, not the time a whole frame takes: a large frame that keeps
    // arriving is progress.
    let silence = Silence::new(rd, failure_timeout);
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, silence);
    loop {
        let frame = read_tagged_frame(&mut rd, max_frame).await;
        let Some(events) = events.upgrade() else {
            return;
        };
        let (body, tag) = match frame {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return events.on_lost(&peer, "silent for the failure timeout")
            }
            Err(e) => return events.on_lost(&peer, &format!("connection lost: {e}")),
            Ok(frame) => frame,
        };
        // Checked before decoding: nothing of a frame that is not the
        // peer's next one is looked at.
        if !key.open(&body, &tag) {
            tracing::warn!(
                node = %peer.ctx.actor, peer = %peer.actor,
                "a frame failed authentication (altered, injected, replayed or out of order); closing the connection"
            );
            return events.on_lost(&peer, "sent a frame that failed authentication");
        }
        peer.ctx
            .stats
            .bytes_received
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        let since_born = tokio::time::Instant::now().saturating_duration_since(peer.born);
        peer.last_frame_us.store(
            u64::try_from(since_born.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match wire::decode(&body) {
            Ok(msg) => events.on_message(&peer, msg),
            Err(e) => {
                tracing::warn!(node = %peer.ctx.actor, peer = %peer.actor, "{e}");
                return events.on_lost(&peer, "sent a malformed frame");
            }
        }
    }
}

async fn run_writer(
    events: Weak<dyn ConnectionEvents>,
    peer: Arc<PeerConn>,
    mut rx: mpsc::UnboundedReceiver<Arc<[u8]>>,
    wr: WriteHalf<BoxStream>,
    done: watch::Sender<bool>,
    mut key: FrameKey,
) {
    let interval = peer.ctx.config.heartbeat_interval;
    let heartbeat: Arc<[u8]> = match wire::encode_frame(&Message::Heartbeat) {
        Ok(f) => f.into(),
        Err(_) => return,
    };
    // A peer that takes no byte for the request timeout while frames wait is
    // dropped, and what was queued for it freed, whether it still sends or
    // not. Longer than the failure timeout: a live peer may be busy for a
    // while with a large frame before it reads the next.
    let stall = Stall::new(wr, peer.ctx.config.request_timeout);
    let mut w = BufWriter::with_capacity(64 * 1024, stall);
    let queued = peer.queued.clone();
    let result: std::io::Result<()> = async {
        loop {
            match tokio::time::timeout(interval, rx.recv()).await {
                Ok(Some(frame)) => {
                    write_tagged(&mut w, &mut key, &frame).await?;
                    queued.fetch_sub(frame.len(), Ordering::Relaxed);
                    while let Ok(frame) = rx.try_recv() {
                        write_tagged(&mut w, &mut key, &frame).await?;
                        queued.fetch_sub(frame.len(), Ordering::Relaxed);
                    }
                    w.flush().await?;
                }
                Ok(None) => {
                    w.flush().await?;
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Err(_) => {
                    write_tagged(&mut w, &mut key, &heartbeat).await?;
                    w.flush().await?;
                }
            }
        }
    }
    .await;
    done.send_replace(true);
    // Whatever is left in the queue is dropped with it.
    rx.close();
    while let Ok(frame) = rx.try_recv() {
        queued.fetch_sub(frame.len(), Ordering::Relaxed);
    }
    if let Err(e) = result {
        if let Some(events) = events.upgrade() {
            events.on_lost(&peer, &format!("write failed: {e}"));
        }
    }
}

/// Writes `frame` (length prefix and body) and its tag. Frames are shared
/// between peers, so the tag, which differs per connection, follows the
/// frame instead of being part of it.
async fn write_tagged<W: AsyncWrite + Unpin>(
    w: &mut W,
    key: &mut FrameKey,
    frame: &[u8],
) -> std::io::Result<()> {
    let tag = key.seal(frame);
    w.write_all(frame).await?;
    w.write_all(&tag).await
}

/// Reads one frame after the handshake: its body and the tag that follows it.
async fn read_tagged_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> std::io::Result<(Vec<u8>, [u8; TAG_LEN])> {
    let body = read_frame(rd, max).await?;
    let mut tag = [0u8; TAG_LEN];
    rd.read_exact(&mut tag).await?;
    Ok((body, tag))
}

/// Writes one message as a frame (during the handshake, before the writer runs).
pub(crate) async fn write_message(stream: &mut BoxStream, msg: &Message) -> Result<()> {
    let frame = wire::encode_frame(msg)?;
    stream
        .write_all(&frame)
        .await
        .map_err(|e| Error::io("handshake write", e))
}

/// Reads one length-prefixed frame, refusing lengths above `max` before reading them
/// (the handshake's messages).
pub(crate) async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(body)
}

/// A reader that fails with `TimedOut` once no byte arrived for `limit`.
struct Silence<R> {
    inner: R,
    limit: Duration,
    /// When the last byte arrived (or the reader was made).
    last_progress: tokio::time::Instant,
    /// Fires at `last_progress + limit` or later; moved on lazily when it fires.
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<R> Silence<R> {
    fn new(inner: R, limit: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Silence {
            inner,
            limit,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Silence<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_progress = tokio::time::Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = this.last_progress + this.limit;
                if tokio::time::Instant::now() >= deadline {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no byte arrived for {:?}", this.limit),
                    )));
                }
                // Bytes came since the timer was set: wait for the rest of the
                // silence allowed since the last of them.
                this.timer.as_mut().reset(deadline);
            },
        }
    }
}

/// A writer that fails with `TimedOut` once a write has taken no byte for
/// `limit` (the peer stopped reading, or the link is gone).
struct Stall<W> {
    inner: W,
    limit: Duration,
    /// When the pending write started waiting, or last took bytes.
    since: Option<tokio::time::Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<W> Stall<W> {
    fn new(inner: W, limit: Duration) -> Self {
        Stall {
            inner,
            limit,
            since: None,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Called while the inner writer is not ready: `Ready(Err)` once it has
    /// not been for `limit`.
    fn check(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Error> {
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert_with(|| {
            self.timer.as_mut().reset(now + self.limit);
            now
        });
        if now >= since + self.limit {
            return Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer took no byte for {:?}", self.limit),
            ));
        }
        let _ = self.timer.as_mut().poll(cx);
        Poll::Pending
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Stall<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.check(cx).map(Err),
            ready => {
                this.since = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check(cx).map(Err),
            ready => {
                this.since = None;
                ready
            }
        }
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
