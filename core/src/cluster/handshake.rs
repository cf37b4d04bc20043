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

use std::net::{IpAddr, SocketAddr};

use super::transport::{read_message, write_message};
use crate::auth::{Role, Session, Transcript};
use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::net::BoxStream;
use crate::vclock::ActorId;
use crate::wire::{Message, MAGIC, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION};

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
    let mut stream = ctx.net.connect(ctx.source_ip, addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot connect to {addr}: {e}"),
        )
    })?;
    let nonce = ctx.random_nonce();
    let hello = Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        actor: ctx.actor.clone(),
        listen: ctx.announce.clone(),
        nonce,
    };
    write_message(&mut stream, &hello).await?;
    let theirs = read_challenge(&mut stream).await?;
    // Before proving anything: a peer with this node's name may be this
    // node's own proof reflected back to it.
    if theirs.actor.name == ctx.actor.name {
        return Err(Error::protocol(format!(
            "{addr} has this node's own name {:?}",
            theirs.actor.name
        )));
    }
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
    match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await? {
        Message::Proof { proof } if transcript.verify(&ctx.cookie, Role::Acceptor, &proof) => {}
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
    match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await {
        Ok(Message::Welcome) => {}
        Ok(other) => return Err(Error::protocol(format!("expected Welcome, got {other:?}"))),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{addr} refused the connection"),
            ))
        }
    }
    let session = transcript.session(&ctx.cookie, Role::Initiator);
    Ok(Authenticated {
        listen: reachable(&theirs.listen, addr.ip()),
        actor: theirs.actor,
        stream,
        session,
    })
}

/// The address a peer announced, with a wildcard IP replaced by `seen`: the
/// address this node reached it at, or saw its connection come from.
pub(crate) fn reachable(announced: &str, seen: IpAddr) -> String {
    match announced.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => SocketAddr::new(seen, a.port()).to_string(),
        _ => announced.to_string(),
    }
}

async fn read_challenge(stream: &mut BoxStream) -> Result<Challenge> {
    match read_message(stream, MAX_HANDSHAKE_FRAME).await? {
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
    mut stream: BoxStream,
    from: SocketAddr,
    admit: impl FnOnce(&ActorId, &str) -> Result<()>,
) -> Result<Authenticated> {
    let (actor, announced, their_nonce) =
        match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await? {
            Message::Hello {
                magic,
                version,
                actor,
                listen,
                nonce,
            } => {
                check_version(magic, version)?;
                (actor, listen, nonce)
            }
            other => return Err(Error::protocol(format!("expected Hello, got {other:?}"))),
        };
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
    let nonce = ctx.random_nonce();
    let challenge = Message::Challenge {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        actor: ctx.actor.clone(),
        listen: ctx.announce.clone(),
        nonce,
    };
    write_message(&mut stream, &challenge).await?;
    let their_proof = match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await? {
        Message::Proof { proof } => proof,
        other => return Err(Error::protocol(format!("expected Proof, got {other:?}"))),
    };
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
