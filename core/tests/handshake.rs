//! The handshake and the tags of frames over real TCP on loopback: a client
//! that has not proved the cookie learns nothing derived from it, a node with
//! another cookie is refused with a warning on both sides, and a relay of a
//! genuine handshake can neither inject nor alter frames.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::raw_peer::{self, read_msg, send_msg, Transcript, TAG_LEN};
use common::{config, runtime, wait_until};
use lbmkv::vclock::{ActorId, VClock};
use lbmkv::wire::{decode, encode_frame, Entries, Message, WireEntry};
use lbmkv::{LogLevel, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const COOKIE: &[u8] = b"test-cookie";

/// Warnings as (target, message).
type Warnings = Arc<Mutex<Vec<(String, String)>>>;

/// Every warning of the process: installed once, since the sink is the
/// process's; each test looks for its own nodes' names.
fn warnings() -> Warnings {
    static SEEN: OnceLock<Warnings> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        lbmkv::set_log_sink(
            LogLevel::Warn,
            Some(Arc::new(move |r: &lbmkv::LogRecord<'_>| {
                if r.level == LogLevel::Warn {
                    into.lock()
                        .unwrap()
                        .push((r.target.to_string(), r.message.to_string()));
                }
            })),
        )
        .expect("log sink");
        seen
    })
    .clone()
}

fn warned(what: impl Fn(&str, &str) -> bool) -> bool {
    warnings().lock().unwrap().iter().any(|(t, m)| what(t, m))
}

/// Splits received bytes into untagged frames' bodies.
fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        let Some(body) = bytes.get(4..4 + len) else {
            break;
        };
        out.push(body.to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

/// Everything the node sends until it closes the connection (or 5 s pass).
async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (all, closed)
}

#[test]
fn a_client_that_has_not_proved_the_cookie_receives_no_proof() {
    runtime().block_on(async {
        // A weak cookie: a proof over a known nonce would crack it offline.
        let node = Node::start(lbmkv::Config {
            cookie: Some(b"s".to_vec()),
            ..config("weak")
        })
        .await
        .unwrap();
        let me = ActorId::new("probe", 1);
        let nonce = [7u8; 32];
        let mut s = TcpStream::connect(node.address()).await.unwrap();
        send_msg(&mut s, &raw_peer::hello(&me, "127.0.0.1:1", nonce)).await;
        let challenge = read_msg(&mut s, Duration::from_secs(5)).await;
        let Some(Message::Challenge {
            actor,
            listen,
            nonce: theirs,
            ..
        }) = challenge.clone()
        else {
            panic!("expected a Challenge, got {challenge:?}");
        };
        // A proof the client cannot make without the cookie.
        send_msg(&mut s, &Message::Proof { proof: [9u8; 32] }).await;
        let (rest, closed) = read_to_close(&mut s).await;
        assert!(closed, "the node closes the connection after a wrong proof");
        let received: Vec<Message> = frames(&rest).iter().map(|b| decode(b).unwrap()).collect();
        assert_eq!(received, vec![Message::Rejected], "no proof, only Rejected");
        // Nor does any byte string the node sent hold the proof it would
        // have sent to a client that proved the cookie.
        let t = Transcript {
            initiator: me.clone(),
            initiator_listen: "127.0.0.1:1".into(),
            initiator_nonce: nonce,
            acceptor: actor,
            acceptor_listen: listen,
            acceptor_nonce: theirs,
        };
        let withheld = t.acceptor_proof(b"s");
        let mut all = encode_frame(&challenge.unwrap()).unwrap();
        all.extend_from_slice(&rest);
        for part in [&withheld[..], &withheld[..TAG_LEN], &withheld[16..]] {
            assert!(
                !all.windows(part.len()).any(|w| w == part),
                "the node sent part of its proof to a client that proved nothing"
            );
        }
        // The same client, with the cookie, gets the node's proof.
        let mut s = TcpStream::connect(node.address()).await.unwrap();
        assert!(
            raw_peer::handshake(&mut s, b"s", &me, "127.0.0.1:1", nonce)
                .await
                .is_some(),
            "a client that proves the cookie receives the node's proof and a Welcome"
        );
    });
}

#[test]
fn a_node_with_another_cookie_is_refused_and_the_acceptor_warns() {
    let warnings = warnings();
    runtime().block_on(async {
        let good = common::start("keeper").await;
        let intruder = Node::start(lbmkv::Config {
            cookie: Some(b"another".to_vec()),
            seeds: vec![good.address().to_string()],
            ..config("stranger")
        })
        .await
        .unwrap();
        wait_until(Duration::from_secs(10), || {
            warned(|target, m| {
                target == "lbmkv::cluster::membership"
                    && m.starts_with("refused a connection: ")
                    && m.contains("stranger failed authentication (different cookie)")
                    && m.contains("node=keeper#")
            })
        })
        .await;
        // The dialer is told too, and warns on its side.
        wait_until(Duration::from_secs(10), || {
            warned(|_, m| {
                m.contains("dial refused")
                    && m.contains("failed authentication (different cookie)")
                    && m.contains("node=stranger#")
            })
        })
        .await;
        assert_eq!(good.members().unwrap(), vec!["keeper"]);
        assert_eq!(intruder.members().unwrap(), vec!["stranger"]);
        drop(warnings);
    });
}

// ---------------------------------------------------------------------------
// A relay between two nodes: it forwards a genuine handshake, then tampers.

enum Tamper {
    /// Writes these bytes to the acceptor between two forwarded frames.
    Inject(Vec<u8>),
    /// Sends this message to the acceptor with the tag the initiator would
    /// give it (the relay is handed the cookie: the control of the tests).
    InjectWithGoodTag(Message),
    /// Flips a byte of the next `Apply` frame forwarded to the acceptor that
    /// holds this byte string.
    FlipApplyHolding(Vec<u8>),
}

/// The relay's side towards the acceptor.
struct ToAcceptor {
    wr: tokio::net::tcp::OwnedWriteHalf,
    /// Tagged frames written so far: the number of the next one.
    forwarded: u64,
    flip: Option<Vec<u8>>,
}

struct Relay {
    addr: SocketAddr,
    tamper: mpsc::UnboundedSender<Tamper>,
    /// Set when the acceptor closed the relayed connection.
    cut: watch::Receiver<bool>,
}

/// Relays the first connection to it to `target`.
async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tamper, mut orders) = mpsc::unbounded_channel::<Tamper>();
    let (cut_tx, cut) = watch::channel(false);
    tokio::spawn(async move {
        let (a, _) = listener.accept().await.unwrap();
        // Later connections (the nodes dial each other directly too) are refused.
        drop(listener);
        let b = TcpStream::connect(target).await.unwrap();
        let (mut a_rd, mut a_wr) = a.into_split();
        let (mut b_rd, b_wr) = b.into_split();
        let hello = Arc::new(Mutex::new(None::<Message>));
        let challenge = Arc::new(Mutex::new(None::<Message>));
        let seen_hello = hello.clone();
        let seen_challenge = challenge.clone();
        // Acceptor to initiator: verbatim, noting the Challenge.
        tokio::spawn(async move {
            if let Some(body) = raw_peer::read_body(&mut b_rd, Duration::from_secs(5)).await {
                *seen_challenge.lock().unwrap() = decode(&body).ok();
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend(body);
                let _ = a_wr.write_all(&frame).await;
            }
            let _ = tokio::io::copy(&mut b_rd, &mut a_wr).await;
            cut_tx.send_replace(true);
            let _ = a_wr.shutdown().await;
        });
        // Initiator to acceptor: frame by frame, so that tampering falls
        // between frames. Hello and Proof have no tag, later frames have one.
        let to_b = Arc::new(tokio::sync::Mutex::new(ToAcceptor {
            wr: b_wr,
            forwarded: 0,
            flip: None,
        }));
        let tampering = to_b.clone();
        tokio::spawn(async move {
            while let Some(order) = orders.recv().await {
                let mut to_b = tampering.lock().await;
                match order {
                    Tamper::Inject(bytes) => {
                        let _ = to_b.wr.write_all(&bytes).await;
                    }
                    Tamper::InjectWithGoodTag(m) => {
                        let t = transcript(&hello, &challenge).expect("a handshake went by");
                        let mut key = t.initiator_frames(COOKIE);
                        key.next = to_b.forwarded;
                        to_b.forwarded += 1;
                        let _ = to_b.wr.write_all(&key.seal_msg(&m)).await;
                    }
                    Tamper::FlipApplyHolding(needle) => to_b.flip = Some(needle),
                }
            }
        });
        let mut pending: Vec<u8> = Vec::new();
        let mut untagged = 2;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match a_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while pending.len() >= 4 {
                let len = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                let whole = 4 + len + if untagged > 0 { 0 } else { TAG_LEN };
                if pending.len() < whole {
                    break;
                }
                let mut frame: Vec<u8> = pending.drain(..whole).collect();
                let mut to_b = to_b.lock().await;
                if untagged > 0 {
                    if untagged == 2 {
                        *seen_hello.lock().unwrap() = decode(&frame[4..]).ok();
                    }
                    untagged -= 1;
                } else {
                    to_b.forwarded += 1;
                    let body = &frame[4..4 + len];
                    let is_apply = matches!(decode(body), Ok(Message::Apply { .. }));
                    let at = to_b
                        .flip
                        .as_ref()
                        .and_then(|n| body.windows(n.len()).position(|w| w == &n[..]));
                    if let (true, Some(at)) = (is_apply, at) {
                        frame[4 + at] ^= 0x01;
                        to_b.flip = None;
                    }
                }
                if to_b.wr.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    });
    Relay { addr, tamper, cut }
}

fn transcript(
    hello: &Mutex<Option<Message>>,
    challenge: &Mutex<Option<Message>>,
) -> Option<Transcript> {
    let Some(Message::Hello {
        actor: initiator,
        listen: initiator_listen,
        nonce: initiator_nonce,
        ..
    }) = hello.lock().unwrap().clone()
    else {
        return None;
    };
    let Some(Message::Challenge {
        actor: acceptor,
        listen: acceptor_listen,
        nonce: acceptor_nonce,
        ..
    }) = challenge.lock().unwrap().clone()
    else {
        return None;
    };
    Some(Transcript {
        initiator,
        initiator_listen,
        initiator_nonce,
        acceptor,
        acceptor_listen,
        acceptor_nonce,
    })
}

/// `a` (which sorts first, and so sequences) connected to `b` through a relay
/// only, each with a table `t` that took one write through the relay.
async fn relayed_pair(a: &str, b: &str) -> (Node, Node, Relay) {
    assert!(a < b);
    let nb = common::start(b).await;
    nb.create_table("t").await.unwrap();
    let relay = relay(nb.address().parse().unwrap()).await;
    let na = Node::start(lbmkv::Config {
        seeds: vec![relay.addr.to_string()],
        ..config(a)
    })
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        na.members().unwrap().len() == 2 && nb.members().unwrap().len() == 2
    })
    .await;
    let ta = na.create_table("t").await.unwrap();
    // Acknowledged by b: b applies a's batches through the relay.
    ta.put(b"through", b"relay").await.unwrap();
    let tb = nb.table("t").unwrap();
    assert_eq!(tb.get(b"through").unwrap(), Some(b"relay".to_vec()));
    assert!(!*relay.cut.borrow(), "the relayed connection is up");
    (na, nb, relay)
}

/// A batch from `a` that sets "evil" in `t`.
fn forged_apply(a: &Node) -> Message {
    let mut clock = VClock::fresh();
    clock.increment(a.actor(), 1_000_000);
    Message::Apply {
        id: 1_000_000,
        table: "t".into(),
        entries: Entries(vec![WireEntry {
            key: b"evil".to_vec(),
            value: Some(b"injected".to_vec()),
            clock,
            deadline_ms: None,
        }]),
        causes: Vec::new(),
    }
}

async fn wait_cut(relay: &mut Relay) -> bool {
    tokio::time::timeout(Duration::from_secs(5), relay.cut.wait_for(|c| *c))
        .await
        .is_ok()
}

#[test]
fn an_apply_injected_by_a_relay_of_a_genuine_handshake_cuts_the_connection_and_is_not_stored() {
    let warnings = warnings();
    runtime().block_on(async {
        let (na, nb, mut relay) = relayed_pair("ia", "ib").await;
        let forged = encode_frame(&forged_apply(&na)).unwrap();
        let mut bytes = forged.clone();
        // The relay cannot make the tag: it does not know the cookie.
        bytes.extend_from_slice(&[0u8; TAG_LEN]);
        relay.tamper.send(Tamper::Inject(bytes)).unwrap();
        assert!(wait_cut(&mut relay).await, "b cut the relayed connection");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(nb.table("t").unwrap().get(b"evil").unwrap(), None);
        assert!(warned(
            |_, m| m.contains("a frame failed authentication") && m.contains("node=ib#")
        ));
        drop((na, warnings));
    });
}

#[test]
fn a_byte_flipped_by_a_relay_cuts_the_connection_and_the_altered_value_is_not_stored() {
    let _warnings = warnings();
    runtime().block_on(async {
        let (na, nb, mut relay) = relayed_pair("fa", "fb").await;
        relay
            .tamper
            .send(Tamper::FlipApplyHolding(b"original".to_vec()))
            .unwrap();
        let ta = na.table("t").unwrap();
        // Its outcome does not matter: b never acknowledges the altered batch.
        let put = tokio::spawn(async move { ta.put(b"k", b"original").await });
        assert!(wait_cut(&mut relay).await, "b cut the relayed connection");
        let tb = nb.table("t").unwrap();
        for _ in 0..20 {
            let v = tb.get(b"k").unwrap();
            assert!(
                v.is_none() || v.as_deref() == Some(&b"original"[..]),
                "b stored an altered value: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(warned(
            |_, m| m.contains("a frame failed authentication") && m.contains("node=fb#")
        ));
        let _ = put.await;
    });
}

#[test]
fn the_same_apply_with_a_good_tag_is_stored_so_the_relay_tests_test_the_tag() {
    runtime().block_on(async {
        let (na, nb, relay) = relayed_pair("ca", "cb").await;
        relay
            .tamper
            .send(Tamper::InjectWithGoodTag(forged_apply(&na)))
            .unwrap();
        let tb = nb.table("t").unwrap();
        wait_until(Duration::from_secs(5), || {
            tb.get(b"evil").unwrap() == Some(b"injected".to_vec())
        })
        .await;
    });
}
