//! The wire protocol spoken by hand, as a peer that knows the cookie (or
//! pretends to): the handshake's proofs, the session keys and the tags of
//! frames, written from the protocol's description rather than taken from
//! the engine, so that tests check the engine against it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lbmkv::vclock::ActorId;
use lbmkv::wire::{decode, encode_frame, Message, MAGIC, PROTOCOL_VERSION};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag after each frame.
pub const TAG_LEN: usize = 16;

fn keyed(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(key).unwrap()
}

/// What both sides said in one handshake.
#[derive(Clone, Debug)]
pub struct Transcript {
    pub initiator: ActorId,
    pub initiator_listen: String,
    pub initiator_nonce: [u8; 32],
    pub acceptor: ActorId,
    pub acceptor_listen: String,
    pub acceptor_nonce: [u8; 32],
}

impl Transcript {
    fn mac(&self, cookie: &[u8], label: &[u8]) -> [u8; 32] {
        let mut mac = keyed(cookie);
        mac.update(label);
        mac.update(&PROTOCOL_VERSION.to_be_bytes());
        for (actor, listen, nonce) in [
            (
                &self.initiator,
                &self.initiator_listen,
                &self.initiator_nonce,
            ),
            (&self.acceptor, &self.acceptor_listen, &self.acceptor_nonce),
        ] {
            mac.update(&(actor.name.len() as u64).to_be_bytes());
            mac.update(actor.name.as_bytes());
            mac.update(&actor.incarnation.to_be_bytes());
            mac.update(&(listen.len() as u64).to_be_bytes());
            mac.update(listen.as_bytes());
            mac.update(nonce);
        }
        mac.finalize().into_bytes().into()
    }

    pub fn initiator_proof(&self, cookie: &[u8]) -> [u8; 32] {
        self.mac(cookie, b"lbmkv proof initiator\0")
    }

    pub fn acceptor_proof(&self, cookie: &[u8]) -> [u8; 32] {
        self.mac(cookie, b"lbmkv proof acceptor\0")
    }

    /// The key of the frames the initiator sends.
    pub fn initiator_frames(&self, cookie: &[u8]) -> Sealer {
        Sealer::new(self.mac(cookie, b"lbmkv frames initiator to acceptor\0"))
    }

    /// The key of the frames the acceptor sends.
    pub fn acceptor_frames(&self, cookie: &[u8]) -> Sealer {
        Sealer::new(self.mac(cookie, b"lbmkv frames acceptor to initiator\0"))
    }
}

/// One direction's key and the number of its next frame.
#[derive(Clone, Debug)]
pub struct Sealer {
    key: [u8; 32],
    pub next: u64,
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key, next: 0 }
    }

    /// The tag of frame number `seq` (length prefix and body).
    pub fn tag(&self, seq: u64, frame: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = keyed(&self.key);
        mac.update(&seq.to_be_bytes());
        mac.update(frame);
        let full = mac.finalize().into_bytes();
        full[..TAG_LEN].try_into().unwrap()
    }

    /// `frame` followed by its tag, as the next frame.
    pub fn seal(&mut self, frame: &[u8]) -> Vec<u8> {
        let tag = self.tag(self.next, frame);
        self.next += 1;
        let mut out = frame.to_vec();
        out.extend_from_slice(&tag);
        out
    }

    /// `m` as the next frame.
    pub fn seal_msg(&mut self, m: &Message) -> Vec<u8> {
        self.seal(&encode_frame(m).unwrap())
    }
}

/// A `Hello` from `me`.
pub fn hello(me: &ActorId, listen: &str, nonce: [u8; 32]) -> Message {
    Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        actor: me.clone(),
        listen: listen.into(),
        nonce,
    }
}

pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> bool {
    s.write_all(bytes).await.is_ok() && s.flush().await.is_ok()
}

pub async fn send_msg<S: AsyncWrite + Unpin>(s: &mut S, m: &Message) -> bool {
    send(s, &encode_frame(m).unwrap()).await
}

/// The body of the next untagged frame, or `None` at the end of the stream,
/// an error, or after `wait`.
pub async fn read_body<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// The next untagged message (a handshake message).
pub async fn read_msg<S: AsyncRead + Unpin>(s: &mut S, wait: Duration) -> Option<Message> {
    decode(&read_body(s, wait).await?).ok()
}

/// The initiator's side of a correct handshake as `me` with `cookie`: the
/// transcript once the acceptor proved the cookie and welcomed it.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cookie: &[u8],
    me: &ActorId,
    listen: &str,
    nonce: [u8; 32],
) -> Option<Transcript> {
    send_msg(s, &hello(me, listen, nonce)).await;
    let wait = Duration::from_secs(2);
    let Some(Message::Challenge {
        actor,
        listen: their_listen,
        nonce: their_nonce,
        ..
    }) = read_msg(s, wait).await
    else {
        return None;
    };
    let t = Transcript {
        initiator: me.clone(),
        initiator_listen: listen.into(),
        initiator_nonce: nonce,
        acceptor: actor,
        acceptor_listen: their_listen,
        acceptor_nonce: their_nonce,
    };
    let proof = t.initiator_proof(cookie);
    send_msg(s, &Message::Proof { proof }).await;
    match read_msg(s, wait).await {
        Some(Message::Proof { proof }) if proof == t.acceptor_proof(cookie) => {}
        _ => return None,
    }
    match read_msg(s, wait).await {
        Some(Message::Welcome) => Some(t),
        _ => None,
    }
}
