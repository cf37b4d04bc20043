//! The messages nodes exchange, and their framing: a 4-byte big-endian length,
//! then the message encoded with postcard. After the handshake every frame is
//! followed by a 16-byte tag (see `auth::FrameKey`), which the length does
//! not count.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::vclock::{ActorId, Dot, VClock};

/// First field of every handshake message: "LBKV".
pub const MAGIC: u32 = 0x4c42_4b56;
/// Version of this protocol; a peer with another version is refused.
pub const PROTOCOL_VERSION: u16 = 6;
/// Bound on any frame before the peer is authenticated.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// A key, a value or a tombstone, and its clock, as sent between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; `None` is a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// The version's clock.
    pub clock: VClock,
    /// When the value expires, in milliseconds since the Unix epoch (`None`: never).
    pub deadline_ms: Option<u64>,
}

/// Entries as sent in one message: each actor once, and every dot as an
/// index into that list, so a batch of entries written by the same few nodes
/// carries their names once instead of once per entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries(pub Vec<WireEntry>);

#[derive(Serialize)]
struct EntriesOut<'a> {
    actors: Vec<&'a ActorId>,
    entries: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    key: &'a serde_bytes::Bytes,
    value: Option<&'a serde_bytes::Bytes>,
    dots: Vec<(u32, Dot)>,
    deadline_ms: Option<u64>,
}

#[derive(Deserialize)]
struct EntriesIn {
    actors: Vec<ActorId>,
    entries: Vec<EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    dots: Vec<(u32, Dot)>,
    deadline_ms: Option<u64>,
}

impl Serialize for Entries {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut out = EntriesOut {
            actors: Vec::new(),
            entries: Vec::with_capacity(self.0.len()),
        };
        for e in &self.0 {
            let mut dots = Vec::with_capacity(e.clock.len());
            for (actor, dot) in e.clock.dots() {
                // Few actors per message: a linear search beats hashing names.
                let i = match out.actors.iter().position(|a| *a == actor) {
                    Some(i) => i,
                    None => {
                        out.actors.push(actor);
                        out.actors.len() - 1
                    }
                };
                dots.push((i as u32, *dot));
            }
            out.entries.push(EntryOut {
                key: serde_bytes::Bytes::new(&e.key),
                value: e.value.as_deref().map(serde_bytes::Bytes::new),
                dots,
                deadline_ms: e.deadline_ms,
            });
        }
        out.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let input = EntriesIn::deserialize(deserializer)?;
        let mut entries = Vec::with_capacity(input.entries.len());
        for e in input.entries {
            let mut dots = Vec::with_capacity(e.dots.len());
            for (i, dot) in e.dots {
                let actor = input
                    .actors
                    .get(i as usize)
                    .ok_or_else(|| serde::de::Error::custom("a dot names an unknown actor"))?;
                dots.push((actor.clone(), dot));
            }
            entries.push(WireEntry {
                key: e.key,
                value: e.value,
                clock: VClock::from_dots(dots),
                deadline_ms: e.deadline_ms,
            });
        }
        Ok(Entries(entries))
    }
}

/// Entries in the form a replica stores them, as a merge sends them: the
/// blocks one after another, each `key_len: u32 | value_len: u32 (u32::MAX:
/// tombstone) | dots: u16 (top bit: a deadline follows) | [deadline: u64] |
/// dots × (actor: u32, counter: u64, timestamp: u64) | key | value`, integers
/// little-endian, actors as indexes into `actors`. Copied out of one store
/// and into another without decoding each entry (see [`crate::store`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedEntries {
    /// The actors the dots name.
    pub actors: Vec<ActorId>,
    /// The blocks.
    #[serde(with = "serde_bytes")]
    pub blocks: Vec<u8>,
}

/// A peer as told to other peers for transitive connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's actor id.
    pub actor: ActorId,
    /// The address it listens on.
    pub listen: String,
}

/// What a node tells its peers about one of its tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// Whether this node has a conflict handler for it.
    pub has_handler: bool,
}

/// One write (or strong read) sent to a table's sequencer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set these keys (one key for `put`, several for `put_many`).
    Put(#[serde(with = "byte_pairs")] Vec<(Vec<u8>, Vec<u8>)>),
    /// Delete these keys (leave tombstones).
    Delete(#[serde(with = "byte_lists")] Vec<Vec<u8>>),
    /// Set (or delete, with `None`) `key` if its clock is still `expected`
    /// (`None`: the key has no entry).
    CompareAndSet {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The clock the caller's function saw.
        expected: Option<VClock>,
        /// The new value, or `None` to delete.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
    /// Apply `changes` if the table digest is still `expected_digest`
    /// (`update_all`: atomic over the whole table).
    CompareAndSetTable {
        /// Digest of the table the caller's function saw.
        expected_digest: u64,
        /// Keys to set (`Some`) or delete (`None`).
        #[serde(with = "byte_changes")]
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
    /// Read `key` at the sequencer, ordered after every write before it.
    Read(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Settle a merge conflict: write `new` (`None`: delete) with a clock that
    /// dominates `merged` (the merge of both sides' clocks) and the key's current
    /// clock, unless a write made after the merge superseded it.
    Resolve {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The merge of the conflicting versions' clocks.
        merged: VClock,
        /// The decided value, or `None` to delete.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
        /// The deadline the decided value keeps: the later of both sides'
        /// (none when a present side has none).
        deadline_ms: Option<u64>,
    },
    /// [`WriteOp::Put`] of values that expire `ttl_ms` after the sequencer
    /// writes them.
    PutExpiring {
        /// The keys and values.
        #[serde(with = "byte_pairs")]
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        /// Milliseconds the values live.
        ttl_ms: u64,
    },
    /// [`WriteOp::CompareAndSet`] whose new value expires `ttl_ms` after
    /// the sequencer writes it.
    CompareAndSetExpiring {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The clock the caller's function saw.
        expected: Option<VClock>,
        /// The new value, or `None` to delete.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
        /// Milliseconds the value lives.
        ttl_ms: u64,
    },
    /// Delete each of these keys whose live value is past its deadline by
    /// the sequencer's clock (the sequencer's own expiry task sends it).
    Expire(#[serde(with = "byte_lists")] Vec<Vec<u8>>),
}

// Keys and values as byte strings: postcard encodes them exactly as it does
// sequences of `u8` (a length, then the bytes), so the wire is unchanged, but
// they are copied whole instead of one byte at a time (seconds for a 60 MiB
// value in a debug build).

mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(v: &Pairs, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let v: Vec<(ByteBuf, ByteBuf)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect())
    }
}

mod byte_lists {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|k| Bytes::new(k)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

mod byte_changes {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

    pub fn serialize<S: Serializer>(v: &Changes, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            v.iter()
                .map(|(k, v)| (Bytes::new(k), v.as_deref().map(Bytes::new))),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Changes, D::Error> {
        let v: Vec<(ByteBuf, Option<ByteBuf>)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(k, v)| (k.into_vec(), v.map(ByteBuf::into_vec)))
            .collect())
    }
}

/// The sequencer's answer to a [`WriteOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Put or delete: the live values the keys had before.
    Previous(#[serde(with = "byte_pairs")] Vec<(Vec<u8>, Vec<u8>)>),
    /// Compare-and-set applied (or nothing to do).
    Swapped,
    /// Compare-and-set refused: the key's current value and clock, to retry with.
    Mismatch {
        /// The current value (`None`: absent or deleted).
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// The current clock (`None`: no entry).
        clock: Option<VClock>,
    },
    /// Table compare-and-set refused: the table changed meanwhile.
    TableMismatch,
    /// Strong read result.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// A resolution found a newer write in its place and wrote nothing.
    Superseded,
}

/// Why a sequencer did not take a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteRefusal {
    /// The receiver is not the table's sequencer in its view: retry after the views settle.
    NotSequencer,
    /// The write failed.
    Failed(ErrorKind, String),
}

/// Where a node stands in its view, as its peers learn it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node finished its first merge with the members it joined (or
    /// started alone), so it may sequence.
    pub ready: bool,
    /// The sequencer it follows (itself included), if any.
    pub follows: Option<ActorId>,
    /// The sequencer whose batches it applied last (itself if it sequenced), if any.
    pub applied_from: Option<ActorId>,
    /// The newest [`Message::Probe`] id it received from the receiver (0: none).
    pub echo: u64,
    /// Its peers, so that members notice a partial partition.
    pub view: Vec<ActorId>,
    /// It stands out of a partial partition: a view that holds it is a side
    /// of that partition, not the cluster.
    pub stepped_out: bool,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Handshake 1, initiator to acceptor.
    Hello {
        /// [`MAGIC`].
        magic: u32,
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The initiator.
        actor: ActorId,
        /// Where the initiator listens.
        listen: String,
        /// The initiator's nonce.
        nonce: [u8; 32],
    },
    /// Handshake 2, acceptor to initiator: its identity and its nonce. It
    /// proves nothing yet: a peer learns nothing derived from the cookie
    /// before it proved the cookie itself.
    Challenge {
        /// [`MAGIC`].
        magic: u32,
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The acceptor.
        actor: ActorId,
        /// Where the acceptor listens.
        listen: String,
        /// The acceptor's nonce.
        nonce: [u8; 32],
    },
    /// Handshake 3, initiator to acceptor, then 4, acceptor to initiator once
    /// the initiator's proof checked out: HMAC-SHA256 of the cookie over the
    /// handshake (both identities, announced addresses and nonces) and the
    /// sender's role.
    Proof {
        /// HMAC-SHA256 proof.
        proof: [u8; 32],
    },
    /// Handshake 4 instead of the acceptor's proof: the initiator's proof is
    /// wrong (another cookie). The acceptor closes the connection.
    Rejected,
    /// Handshake 5, acceptor to initiator: accepted. Every later frame in
    /// both directions carries a tag.
    Welcome,
    /// Keeps an idle connection alive.
    Heartbeat,
    /// The sender is closing; treat it as down at once.
    Leaving,
    /// The peers the sender knows, for transitive connect.
    Members(Vec<PeerInfo>),
    /// The sender's tables, sent once after the handshake.
    Tables(Vec<TableInfo>),
    /// A table was created, or its handler changed, on the sender.
    TableChanged(TableInfo),
    /// A write for a sequencer.
    WriteRequest {
        /// Request id, echoed in the reply.
        id: u64,
        /// The table.
        table: String,
        /// The write.
        op: WriteOp,
    },
    /// A sequencer's answer.
    WriteReply {
        /// The request id.
        id: u64,
        /// The outcome.
        result: std::result::Result<WriteOutcome, WriteRefusal>,
    },
    /// An ordered batch of entries from a sequencer, to apply and acknowledge.
    Apply {
        /// Batch id, echoed in the acknowledgement.
        id: u64,
        /// The table.
        table: String,
        /// The new versions.
        entries: Entries,
        /// Why the versions that are not plain writes were written, by
        /// index into `entries` (for the watches of the members).
        causes: Vec<(u32, WriteCause)>,
    },
    /// A batch was applied.
    ApplyAck {
        /// The batch id.
        id: u64,
    },
    /// Merge, step 1: the initiator's digest of a table.
    SyncDigest {
        /// Merge session id.
        session: u64,
        /// The table.
        table: String,
        /// The initiator's digest level.
        bits: u8,
        /// The initiator's whole-table digest.
        total: u64,
        /// How many entries (tombstones included) the initiator holds: an
        /// empty responder makes room for them at once.
        count: u64,
    },
    /// Merge, step 2: the responder's bucket digests. First all buckets of a
    /// coarse level, then (after each [`Message::SyncDescend`]) the children of
    /// the buckets that differed, in order, down to the final level.
    SyncLeaves {
        /// Merge session id.
        session: u64,
        /// The level of `leaves`.
        bits: u8,
        /// The level the descent ends at: the coarser of both nodes' levels.
        final_bits: u8,
        /// Bucket digests.
        leaves: Vec<u64>,
        /// How many entries (tombstones included) the responder holds (in the
        /// first answer; 0 after a descent): an empty initiator makes room
        /// for them at once.
        count: u64,
    },
    /// Merge, step 2 again: the initiator asks for the children, at level
    /// `bits`, of the `buckets` (at level `parent_bits`) whose digests differ.
    SyncDescend {
        /// Merge session id.
        session: u64,
        /// The level of `buckets`.
        parent_bits: u8,
        /// The level of the children wanted.
        bits: u8,
        /// The differing buckets, sorted.
        buckets: Vec<u32>,
    },
    /// Merge, step 3, in chunks: the initiator's side of the differing buckets
    /// at the final level: a (key hash, entry hash) summary of each entry, or
    /// the entry itself where the responder's bucket is empty.
    SyncSummary {
        /// Merge session id.
        session: u64,
        /// The differing buckets (first chunk only).
        buckets: Vec<u32>,
        /// (key hash, entry hash) of initiator entries.
        summary: Vec<(u64, u64)>,
        /// Whole initiator entries, for buckets the responder has nothing in.
        entries: PackedEntries,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Merge, step 4: the key hashes whose initiator entries the responder
    /// lacks or has in another version (its own such entries follow).
    SyncWant {
        /// Merge session id.
        session: u64,
        /// Key hashes wanted.
        want: Vec<u64>,
    },
    /// Merge, steps 4 and 5, in chunks: entries the other side lacks or has
    /// in another version.
    SyncEntries {
        /// Merge session id.
        session: u64,
        /// The entries.
        entries: PackedEntries,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Merge finished (also the answer to a digest that matched).
    SyncDone {
        /// Merge session id.
        session: u64,
    },
    /// The initiator finished a merge of every table (the first one after a
    /// connect, an anti-entropy round, or one the peer asked for).
    SyncAllDone {
        /// How many of the peer's [`Message::SyncRequest`]s had arrived when
        /// this round began: the rounds it asked for that are now done.
        served: u64,
    },
    /// Asks the peer (the initiator of merges on this connection) for a merge
    /// of every table that begins after this message arrives.
    SyncRequest,
    /// Where the sender stands in its view. Sent after connecting, whenever it
    /// changes, and in answer to every [`Message::Probe`].
    Status(Status),
    /// A node that believes it is the sequencer asks its peers to confirm
    /// that they follow it; each answers with a [`Message::Status`].
    Probe {
        /// Probe id, echoed in the answer.
        id: u64,
    },
    /// A batch was refused: the sender does not follow its sequencer.
    ApplyRefused {
        /// The batch id.
        id: u64,
    },
    /// Handshake, either side, in place of its next handshake message: the
    /// sender turns the connection away and says why (a node that requires
    /// TLS answering a plain-text peer, a certificate that does not name its
    /// node), then closes it.
    Refused {
        /// Why, for the peer's log.
        reason: String,
    },
    /// The sender, a sequencer, took back versions of its own that a member
    /// refused: a member that applied one restores what it replaced.
    Retract {
        /// The table.
        table: String,
        /// The versions, newest first.
        versions: Vec<Retracted>,
    },
}

/// Why a sequencer wrote a version other than for a plain write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteCause {
    /// A conflict resolution.
    Resolve,
    /// An expiry.
    Expiry,
}

/// A version a sequencer took back (see [`Message::Retract`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retracted {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The clock of the version taken back.
    pub written: VClock,
    /// What it replaced: a value or a tombstone and its clock; `None`: the
    /// key was absent.
    pub replaced: Option<Restored>,
}

/// The version a [`Retracted`] one replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The value; `None` is a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Its clock.
    pub clock: VClock,
    /// Its deadline, if it had one.
    pub deadline_ms: Option<u64>,
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4])
        .map_err(|e| Error::internal(format!("cannot encode message: {e}")))?;
    let len =
        u32::try_from(buf.len() - 4).map_err(|_| Error::invalid("message larger than 4 GiB"))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Decodes the body of one frame.
pub fn decode(body: &[u8]) -> Result<Message> {
    postcard::from_bytes(body).map_err(|e| Error::protocol(format!("malformed frame: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_strings_keep_the_encoding_of_byte_sequences() {
        #[derive(serde::Serialize)]
        enum Plain {
            Put(Vec<(Vec<u8>, Vec<u8>)>),
            Delete(Vec<Vec<u8>>),
            CompareAndSet {
                key: Vec<u8>,
                expected: Option<VClock>,
                new: Option<Vec<u8>>,
            },
            CompareAndSetTable {
                expected_digest: u64,
                changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
            },
            Read(Vec<u8>),
        }
        let (k, v) = (b"key".to_vec(), vec![7u8; 300]);
        let cases = [
            (
                WriteOp::Put(vec![(k.clone(), v.clone())]),
                Plain::Put(vec![(k.clone(), v.clone())]),
            ),
            (
                WriteOp::Delete(vec![k.clone(), v.clone()]),
                Plain::Delete(vec![k.clone(), v.clone()]),
            ),
            (
                WriteOp::CompareAndSet {
                    key: k.clone(),
                    expected: None,
                    new: Some(v.clone()),
                },
                Plain::CompareAndSet {
                    key: k.clone(),
                    expected: None,
                    new: Some(v.clone()),
                },
            ),
            (
                WriteOp::CompareAndSetTable {
                    expected_digest: 9,
                    changes: vec![(k.clone(), None), (v.clone(), Some(k.clone()))],
                },
                Plain::CompareAndSetTable {
                    expected_digest: 9,
                    changes: vec![(k.clone(), None), (v.clone(), Some(k.clone()))],
                },
            ),
            (WriteOp::Read(k.clone()), Plain::Read(k.clone())),
        ];
        for (op, plain) in cases {
            let bytes = postcard::to_stdvec(&op).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&plain).unwrap(), "{op:?}");
            assert_eq!(postcard::from_bytes::<WriteOp>(&bytes).unwrap(), op);
        }
    }

    use super::*;

    #[test]
    fn frame_round_trip() {
        let msg = Message::WriteRequest {
            id: 7,
            table: "t".into(),
            op: WriteOp::Put(vec![(b"k".to_vec(), b"v".to_vec())]),
        };
        let frame = encode_frame(&msg).unwrap();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn entries_carry_each_actor_once_and_round_trip() {
        let (a, b) = (ActorId::new("node-a", 1), ActorId::new("node-b", 2));
        let mut clock = VClock::fresh();
        clock.increment(&a, 10);
        clock.increment(&b, 20);
        let entries: Vec<WireEntry> = (0..100u8)
            .map(|i| WireEntry {
                key: vec![i],
                value: (i % 3 != 0).then(|| vec![i; 10]),
                clock: clock.clone(),
                deadline_ms: (i % 2 == 0).then_some(u64::from(i) << 40),
            })
            .collect();
        let msg = Message::Apply {
            id: 1,
            table: "t".into(),
            entries: Entries(entries),
            causes: vec![(3, WriteCause::Expiry)],
        };
        let frame = encode_frame(&msg).unwrap();
        assert_eq!(decode(&frame[4..]).unwrap(), msg);
        let names = frame.windows(6).filter(|w| *w == b"node-a").count();
        assert_eq!(names, 1, "the actor's name is sent once per message");
    }

    #[test]
    fn a_dot_naming_an_unknown_actor_is_refused() {
        #[derive(Serialize)]
        struct Forged<'a> {
            actors: Vec<ActorId>,
            entries: Vec<EntryOut<'a>>,
        }
        let dot = Dot {
            counter: 1,
            timestamp_ms: 1,
        };
        let forged = |actors: Vec<ActorId>| {
            postcard::to_allocvec(&Forged {
                actors,
                entries: vec![EntryOut {
                    key: serde_bytes::Bytes::new(b"k"),
                    value: None,
                    dots: vec![(0, dot)],
                    deadline_ms: None,
                }],
            })
            .unwrap()
        };
        // The same bytes decode once the index names an actor that was sent.
        let good = postcard::from_bytes::<Entries>(&forged(vec![ActorId::new("a", 1)])).unwrap();
        assert_eq!(good.0[0].clock.counter(&ActorId::new("a", 1)), 1);
        assert!(postcard::from_bytes::<Entries>(&forged(vec![])).is_err());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let err = decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }
}
