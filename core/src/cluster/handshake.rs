//! The handshake: magic and protocol version, then a mutual HMAC-SHA256
//! challenge-response over the cookie in which the initiator proves first,
//! so that a peer that does not know the cookie never sees anything derived
//! from it. Both sides leave with the keys that authenticate every later
//! frame. Dialing and accepting return an authenticated peer; what becomes of
//! it is membership's decision.
//!
//! ```text
//! initiator                                   acceptor
//!   Hello{magic, version, actor, listen, nonce} ->
//!                <- Challenge{magic, version, actor, listen, nonce}
//!   Proof{initiator's proof} ->
//!                <- Proof{acceptor's proof}   (or Rejected, then close)
//!                <- Welcome                   (or close: refused by admission)
//!   frames with tags <-> frames with tags
//! ```
//!
//! With TLS configured, the whole exchange runs inside mutual TLS, and each
//! side checks that the name its peer gives is one its certificate holds
//! before it proves anything. Either side may answer `Refused{reason}` in
//! place of its next message to say why it turns the peer away (a node that
//! requires TLS answering a plain-text peer, a certificate for another node).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::transport::{read_frame, write_message};
use crate::auth::{Role, Session, Transcript};
use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::net::BoxStream;
use crate::tls::{self, PeerCert, HANDSHAKE_RECORD};
use crate::vclock::ActorId;
use crate::wire::{self, Message, MAGIC, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION};

/// A peer that proved it knows the cookie.
pub(crate) struct Authenticated {
    pub actor: ActorId,
    /// Where the peer listens.
    pub listen: String,
    pub stream: BoxStream,
    /// The keys of this connection's frames.
    pub session: Session,
}

/// The acceptor's part of the handshake as the initiator receives it.
struct Challenge {
    actor: ActorId,
    listen: String,
    nonce: [u8; 32],
}

/// Connects to `addr` and authenticates both ways; `on_proof` runs once the
/// peer proved the cookie, even if it turns the connection away afterwards.
pub(crate) async fn dial(
    ctx: &Context,
    addr: SocketAddr,
    on_proof: impl FnOnce(),
) -> Result<Authenticated> {
    let stream = ctx.net.connect(ctx.source_ip, addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot connect to {addr}: {e}"),
        )
    })?;
    let (mut stream, cert) = secure_dialed(ctx, stream, addr).await?;
    let nonce = ctx.random_nonce();
    let hello = Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        actor: ctx.actor.clone(),
        listen: ctx.announce.clone(),
        nonce,
    };
    if let Err(e) = write_message(&mut stream, &hello).await {
        return Err(why_write_failed(&mut stream, e).await);
    }
    let theirs = read_challenge(&mut stream, addr).await?;
    // Before proving anything: a peer with this node's name may be this
    // node's own proof reflected back to it.
    if theirs.actor.name == ctx.actor.name {
        return Err(Error::protocol(format!(
            "{addr} has this node's own name {:?}",
            theirs.actor.name
        )));
    }
    check_certificate(&mut stream, cert.as_ref(), &theirs.actor.name, &addr).await?;
    let transcript = Transcript {
        version: PROTOCOL_VERSION,
        initiator: &ctx.actor,
        initiator_listen: &ctx.announce,
        initiator_nonce: &nonce,
        acceptor: &theirs.actor,
        acceptor_listen: &theirs.listen,
        acceptor_nonce: &theirs.nonce,
    };
    let proof = transcript.proof(&ctx.cookie, Role::Initiator);
    write_message(&mut stream, &Message::Proof { proof }).await?;
    read_acceptor_answer(&mut stream, &transcript, &ctx.cookie, addr, on_proof).await?;
    let session = transcript.session(&ctx.cookie, Role::Initiator);
    Ok(Authenticated {
        listen: reachable(&theirs.listen, addr.ip()),
        actor: theirs.actor,
        stream,
        session,
    })
}

/// A handshake write that failed: over TLS, the peer may have refused this
/// node's certificate after the TLS handshake ended on this side (TLS 1.3
/// checks the client's last), and its alert, read briefly, says why.
async fn why_write_failed(stream: &mut BoxStream, e: Error) -> Error {
    let limit = std::time::Duration::from_millis(500);
    match tokio::time::timeout(limit, read(stream)).await {
        Ok(Err(alert)) if alert.kind() == ErrorKind::Protocol => alert,
        _ => e,
    }
}

/// With TLS, the dialed connection's TLS handshake.
async fn secure_dialed(
    ctx: &Context,
    stream: BoxStream,
    addr: SocketAddr,
) -> Result<(BoxStream, Option<PeerCert>)> {
    let Some(tls) = &ctx.tls else {
        return Ok((stream, None));
    };
    let (s, c) = tls.connect(stream).await.map_err(|e| {
        let why = tls::describe_io(&e).unwrap_or_else(|| e.to_string());
        let hint = if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
        ) {
            " (the peer closed the connection: a node without TLS, or one that \
             refused this node's certificate)"
        } else {
            ""
        };
        Error::protocol(format!("TLS handshake with {addr} failed: {why}{hint}"))
    })?;
    Ok((s, Some(c)))
}

/// The acceptor's proof, then its welcome; `on_proof` runs between them.
async fn read_acceptor_answer(
    stream: &mut BoxStream,
    transcript: &Transcript<'_>,
    cookie: &[u8],
    addr: SocketAddr,
    on_proof: impl FnOnce(),
) -> Result<()> {
    match read(stream).await? {
        Message::Proof { proof } if transcript.verify(cookie, Role::Acceptor, &proof) => {}
        Message::Proof { .. } => {
            return Err(Error::protocol(format!(
                "{addr} failed authentication (its proof is wrong)"
            )))
        }
        Message::Rejected => {
            return Err(Error::protocol(format!(
                "{addr} failed authentication (different cookie)"
            )))
        }
        other => return Err(Error::protocol(format!("expected Proof, got {other:?}"))),
    }
    on_proof();
    match read(stream).await {
        Ok(Message::Welcome) => {}
        Ok(other) => return Err(Error::protocol(format!("expected Welcome, got {other:?}"))),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{addr} refused the connection"),
            ))
        }
    }
    Ok(())
}

/// The address a peer announced, with a wildcard IP replaced by `seen`: the
/// address this node reached it at, or saw its connection come from.
pub(crate) fn reachable(announced: &str, seen: IpAddr) -> String {
    match announced.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => SocketAddr::new(seen, a.port()).to_string(),
        _ => announced.to_string(),
    }
}

/// Reads one handshake message; a TLS error in it (the peer's alert, say)
/// is a protocol error that names the TLS problem.
async fn read(stream: &mut BoxStream) -> Result<Message> {
    let body =
        read_frame(stream, MAX_HANDSHAKE_FRAME)
            .await
            .map_err(|e| match tls::describe_io(&e) {
                Some(why) => Error::protocol(format!("TLS: {why}")),
                None => Error::new(ErrorKind::Unavailable, format!("handshake read: {e}")),
            })?;
    wire::decode(&body)
}

/// With TLS, checks that the peer's certificate names the node it says it
/// is; when it does not, tells the peer why and fails.
async fn check_certificate(
    stream: &mut BoxStream,
    cert: Option<&PeerCert>,
    name: &str,
    peer: &SocketAddr,
) -> Result<()> {
    let Some(cert) = cert else { return Ok(()) };
    if let Err(why) = cert.check_name(name) {
        let _ = write_message(
            stream,
            &Message::Refused {
                reason: why.clone(),
            },
        )
        .await;
        let _ = stream.shutdown().await;
        return Err(Error::protocol(format!(
            "refused node {name:?} at {peer}: {why}"
        )));
    }
    Ok(())
}

async fn read_challenge(stream: &mut BoxStream, addr: SocketAddr) -> Result<Challenge> {
    match read(stream).await? {
        Message::Challenge {
            magic,
            version,
            actor,
            listen,
            nonce,
        } => {
            check_version(magic, version)?;
            Ok(Challenge {
                actor,
                listen,
                nonce,
            })
        }
        Message::Refused { reason } => Err(Error::protocol(format!(
            "{addr} refused this node: {reason}"
        ))),
        other => Err(Error::protocol(format!(
            "expected Challenge, got {other:?}"
        ))),
    }
}

/// Answers a connection: `admit` may refuse the peer by its identity (and the
/// address it listens on) once both sides proved the cookie, so that a peer
/// turned away knows it met a member of its cluster.
pub(crate) async fn accept(
    ctx: &Context,
    stream: BoxStream,
    from: SocketAddr,
    admit: impl FnOnce(&ActorId, &str) -> Result<()>,
) -> Result<Authenticated> {
    let (mut stream, cert, hello) = open_accepted(ctx, stream, from).await?;
    let (actor, announced, their_nonce) = parse_hello(hello)?;
    if actor == ctx.actor {
        // This node dialed one of its own addresses (a seed list that names it).
        return Err(Error::unavailable("a connection from this node itself"));
    }
    if actor.name == ctx.actor.name {
        return Err(Error::protocol(format!(
            "a peer uses this node's own name {:?}",
            actor.name
        )));
    }
    check_certificate(&mut stream, cert.as_ref(), &actor.name, &from).await?;
    let nonce = ctx.random_nonce();
    let challenge = Message::Challenge {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        actor: ctx.actor.clone(),
        listen: ctx.announce.clone(),
        nonce,
    };
    write_message(&mut stream, &challenge).await?;
    let their_proof = read_initiator_proof(&mut stream, &actor, from).await?;
    let transcript = Transcript {
        version: PROTOCOL_VERSION,
        initiator: &actor,
        initiator_listen: &announced,
        initiator_nonce: &their_nonce,
        acceptor: &ctx.actor,
        acceptor_listen: &ctx.announce,
        acceptor_nonce: &nonce,
    };
    if !transcript.verify(&ctx.cookie, Role::Initiator, &their_proof) {
        // Says no more than the closed connection would: the peer's own
        // side can then tell a wrong cookie from a dropped connection.
        let _ = write_message(&mut stream, &Message::Rejected).await;
        return Err(Error::protocol(format!(
            "{} failed authentication (different cookie)",
            actor.name
        )));
    }
    let proof = transcript.proof(&ctx.cookie, Role::Acceptor);
    write_message(&mut stream, &Message::Proof { proof }).await?;
    let listen = reachable(&announced, from.ip());
    admit(&actor, &listen)?;
    write_message(&mut stream, &Message::Welcome).await?;
    let session = transcript.session(&ctx.cookie, Role::Acceptor);
    Ok(Authenticated {
        actor,
        listen,
        stream,
        session,
    })
}

/// Reads the first byte of an accepted connection to tell TLS from plain
/// text, refuses the kind this node does not speak (saying why), and reads
/// the peer's `Hello`.
async fn open_accepted(
    ctx: &Context,
    mut stream: BoxStream,
    from: SocketAddr,
) -> Result<(BoxStream, Option<PeerCert>, Message)> {
    let mut first = [0u8; 1];
    stream
        .read_exact(&mut first)
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("handshake read: {e}")))?;
    let is_tls = first[0] == HANDSHAKE_RECORD;
    match (&ctx.tls, is_tls) {
        (Some(tls), true) => {
            let (mut s, c) = tls.accept(first[0], stream).await.map_err(|e| {
                let why = tls::describe_io(&e).unwrap_or_else(|| e.to_string());
                Error::protocol(format!("TLS handshake with {from} failed: {why}"))
            })?;
            let hello = read(&mut s).await?;
            Ok((s, Some(c), hello))
        }
        (Some(_), false) => {
            // Read the peer's whole Hello first, so that it reads the answer
            // rather than a reset.
            let _ = read_rest_of_frame(&mut stream, first[0]).await;
            let reason = format!(
                "{} requires TLS, and this node connected in plain text: give it the \
                 cluster's TLS certificate, key and CA",
                ctx.actor.name
            );
            let _ = write_message(&mut stream, &Message::Refused { reason }).await;
            let _ = stream.shutdown().await;
            Err(Error::protocol(format!(
                "refused a plain-text connection from {from}: this node requires TLS"
            )))
        }
        (None, true) => {
            // A TLS record: 1 type byte, 2 of version, 2 of length. Take it
            // whole so that the peer sees the connection end, not a reset.
            let mut header = [0u8; 4];
            if stream.read_exact(&mut header).await.is_ok() {
                let len = u16::from_be_bytes([header[2], header[3]]) as usize;
                let mut record = vec![0u8; len];
                let _ = stream.read_exact(&mut record).await;
            }
            let _ = stream.shutdown().await;
            Err(Error::protocol(format!(
                "refused a TLS connection from {from}: this node has no TLS configured \
                 (configure TLS on every node of the cluster, or on none)"
            )))
        }
        (None, false) => {
            let body = read_rest_of_frame(&mut stream, first[0])
                .await
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("handshake read: {e}")))?;
            let hello = wire::decode(&body)?;
            Ok((stream, None, hello))
        }
    }
}

/// The initiator's identity, listen address and nonce from its `Hello`.
fn parse_hello(hello: Message) -> Result<(ActorId, String, [u8; 32])> {
    match hello {
        Message::Hello {
            magic,
            version,
            actor,
            listen,
            nonce,
        } => {
            check_version(magic, version)?;
            Ok((actor, listen, nonce))
        }
        other => Err(Error::protocol(format!("expected Hello, got {other:?}"))),
    }
}

/// The initiator's proof, or why it turned this node away.
async fn read_initiator_proof(
    stream: &mut BoxStream,
    actor: &ActorId,
    from: SocketAddr,
) -> Result<[u8; 32]> {
    match read(stream).await? {
        Message::Proof { proof } => Ok(proof),
        Message::Refused { reason } => Err(Error::protocol(format!(
            "{} at {from} refused this node: {reason}",
            actor.name
        ))),
        other => Err(Error::protocol(format!("expected Proof, got {other:?}"))),
    }
}

/// The rest of a frame whose first byte was read already.
async fn read_rest_of_frame(stream: &mut BoxStream, first: u8) -> io::Result<Vec<u8>> {
    let mut rest = [0u8; 3];
    stream.read_exact(&mut rest).await?;
    let len = u32::from_be_bytes([first, rest[0], rest[1], rest[2]]) as usize;
    if len > MAX_HANDSHAKE_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {MAX_HANDSHAKE_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

fn check_version(magic: u32, version: u16) -> Result<()> {
    if magic != MAGIC {
        return Err(Error::protocol("not an lbmkv peer (bad magic)"));
    }
    if version != PROTOCOL_VERSION {
        return Err(Error::protocol(format!(
            "protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn a_wildcard_announced_address_takes_the_ip_the_peer_was_seen_at() {
        let seen = "10.1.2.3".parse().unwrap();
        assert_eq!(reachable("0.0.0.0:7000", seen), "10.1.2.3:7000");
        assert_eq!(
            reachable("[::]:7000", "fd00::5".parse().unwrap()),
            "[fd00::5]:7000"
        );
        assert_eq!(reachable("192.168.0.9:7000", seen), "192.168.0.9:7000");
        assert_eq!(reachable("db-1.example:7000", seen), "db-1.example:7000");
    }
}
