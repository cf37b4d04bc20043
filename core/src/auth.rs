//! The cluster secret (the cookie), the mutual HMAC-SHA256 challenge-response
//! of the handshake, and the per-connection keys that authenticate each frame
//! after it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::vclock::ActorId;

type HmacSha256 = Hmac<Sha256>;

/// Environment variable that holds the cookie when the configuration has none.
pub const COOKIE_ENV: &str = "LBMKV_COOKIE";
/// File in the home directory that holds the cookie otherwise (created when missing).
pub const COOKIE_FILE: &str = ".lbmkv.cookie";

/// Finds the cookie: configuration, else `$LBMKV_COOKIE`, else `~/.lbmkv.cookie`,
/// which is created with 32 random bytes (hex) and mode 0600 when missing.
pub fn resolve_cookie(configured: Option<&[u8]>, random: [u8; 32]) -> Result<Vec<u8>> {
    if let Some(c) = configured {
        return Ok(c.to_vec());
    }
    if let Ok(c) = std::env::var(COOKIE_ENV) {
        if !c.is_empty() {
            return Ok(c.into_bytes());
        }
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| Error::invalid("no cookie configured, no $LBMKV_COOKIE and no $HOME"))?;
    cookie_file(&std::path::Path::new(&home).join(COOKIE_FILE), random)
}

/// The cookie in `path`, created from `random` when the file is missing. The
/// file appears whole or not at all (written aside, then linked into place),
/// and every process that raced to create it uses the one that won.
fn cookie_file(path: &std::path::Path, random: [u8; 32]) -> Result<Vec<u8>> {
    match read_private(path) {
        Ok(cookie) => return Ok(cookie),
        Err(None) => {}
        Err(Some(e)) => return Err(e),
    }
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let aside = path.with_extension(format!("{}.{}", std::process::id(), &hex[..8]));
    write_private(&aside, hex.as_bytes())?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(hex.into_bytes()),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_private(path).map_err(|e| {
                e.unwrap_or_else(|| Error::invalid(format!("{} vanished", path.display())))
            })
        }
        Err(e) => Err(Error::io(&format!("creating {}", path.display()), e)),
    }
}

/// Reads a cookie from the file at `path` with the rules of `~/.lbmkv.cookie`:
/// surrounding whitespace is trimmed, an empty file is refused, and so is a
/// file that group or others may access (mode 0600 expected). For a cookie
/// kept out of command lines and environments (`lbmkv node --cookie-file`).
pub fn read_cookie_file(path: &std::path::Path) -> Result<Vec<u8>> {
    read_private(path).map_err(|e| {
        e.unwrap_or_else(|| {
            Error::invalid(format!("cookie file {} does not exist", path.display()))
        })
    })
}

/// The cookie in `path`; `Err(None)` when the file does not exist. A file
/// that group or others may access is refused, as Erlang refuses such an
/// `.erlang.cookie`: whoever reads the cookie can join the cluster.
fn read_private(path: &std::path::Path) -> Result<Vec<u8>, Option<Error>> {
    use std::io::Read;
    let reading = |e: std::io::Error| Error::io(&format!("reading {}", path.display()), e);
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(reading(e))),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(reading)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Some(Error::invalid(format!(
                "{} is accessible by group or others (mode {:03o}); the cookie must be \
                 readable by its owner only: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ))));
        }
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(reading)?;
    cookie_from(path, &bytes).map_err(Some)
}

fn cookie_from(path: &std::path::Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(Error::invalid(format!("{} is empty", path.display())));
    }
    Ok(trimmed.to_vec())
}

fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| Error::io(&format!("creating {}", path.display()), e))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&format!("writing {}", path.display()), e))
}

/// Which side of the handshake; part of every MAC input, so that nothing one
/// side computed is accepted as the other side's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// The side that connected.
    Initiator,
    /// The side that accepted.
    Acceptor,
}

/// Bytes of the MAC that follows every frame after the handshake.
pub const TAG_LEN: usize = 16;

/// What both sides said in a handshake. Proofs and session keys are MACs of
/// the cookie over all of it, so a proof or a key is good for this one
/// handshake only, and a relay that alters an announced address or a nonce
/// breaks both.
pub struct Transcript<'a> {
    /// The protocol version both sides speak.
    pub version: u16,
    /// The side that connected.
    pub initiator: &'a ActorId,
    /// The address the initiator announced, as sent.
    pub initiator_listen: &'a str,
    /// The initiator's nonce (in its `Hello`).
    pub initiator_nonce: &'a [u8; 32],
    /// The side that accepted.
    pub acceptor: &'a ActorId,
    /// The address the acceptor announced, as sent.
    pub acceptor_listen: &'a str,
    /// The acceptor's nonce (in its `Challenge`).
    pub acceptor_nonce: &'a [u8; 32],
}

/// Labels, each ending in a NUL so that none is a prefix of another.
const PROOF_INITIATOR: &[u8] = b"lbmkv proof initiator\0";
const PROOF_ACCEPTOR: &[u8] = b"lbmkv proof acceptor\0";
const FRAMES_FROM_INITIATOR: &[u8] = b"lbmkv frames initiator to acceptor\0";
const FRAMES_FROM_ACCEPTOR: &[u8] = b"lbmkv frames acceptor to initiator\0";

impl Transcript<'_> {
    /// The proof that `role` knows the cookie.
    pub fn proof(&self, cookie: &[u8], role: Role) -> [u8; 32] {
        self.mac(cookie, proof_label(role))
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks `role`'s proof in constant time.
    pub fn verify(&self, cookie: &[u8], role: Role, proof: &[u8; 32]) -> bool {
        self.mac(cookie, proof_label(role))
            .verify_slice(proof)
            .is_ok()
    }

    /// The keys of the connection's two directions, as `me` uses them.
    pub fn session(&self, cookie: &[u8], me: Role) -> Session {
        let key =
            |label: &[u8]| -> [u8; 32] { self.mac(cookie, label).finalize().into_bytes().into() };
        let (from_initiator, from_acceptor) = (
            FrameKey::new(&key(FRAMES_FROM_INITIATOR)),
            FrameKey::new(&key(FRAMES_FROM_ACCEPTOR)),
        );
        match me {
            Role::Initiator => Session {
                send: from_initiator,
                receive: from_acceptor,
            },
            Role::Acceptor => Session {
                send: from_acceptor,
                receive: from_initiator,
            },
        }
    }

    fn mac(&self, cookie: &[u8], label: &[u8]) -> HmacSha256 {
        let mut mac = keyed(cookie);
        mac.update(label);
        mac.update(&self.version.to_be_bytes());
        for (actor, listen, nonce) in [
            (self.initiator, self.initiator_listen, self.initiator_nonce),
            (self.acceptor, self.acceptor_listen, self.acceptor_nonce),
        ] {
            field(&mut mac, actor.name.as_bytes());
            mac.update(&actor.incarnation.to_be_bytes());
            field(&mut mac, listen.as_bytes());
            mac.update(nonce);
        }
        mac
    }
}

fn proof_label(role: Role) -> &'static [u8] {
    match role {
        Role::Initiator => PROOF_INITIATOR,
        Role::Acceptor => PROOF_ACCEPTOR,
    }
}

/// A variable-length field, length first, so that no two transcripts hash
/// the same bytes.
fn field(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

fn keyed(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// The frame keys of one connection.
pub struct Session {
    /// Authenticates the frames this side sends.
    pub send: FrameKey,
    /// Checks the frames this side receives.
    pub receive: FrameKey,
}

/// The key of one direction of a connection and the number of the next
/// frame in it. Each frame's tag covers that number, so a frame dropped,
/// replayed, reordered or sent back to its sender fails the check.
#[derive(Clone)]
pub struct FrameKey {
    /// Keyed once: each frame clones this state instead of hashing the key again.
    mac: HmacSha256,
    next: u64,
}

impl FrameKey {
    fn new(key: &[u8; 32]) -> FrameKey {
        FrameKey {
            mac: keyed(key),
            next: 0,
        }
    }

    fn for_next(&mut self, frame: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&self.next.to_be_bytes());
        for part in frame {
            mac.update(part);
        }
        // 2^64 frames are out of reach: the number never wraps in practice.
        self.next = self.next.wrapping_add(1);
        mac
    }

    /// The tag of the next frame sent, `frame` being its length prefix and body.
    pub fn seal(&mut self, frame: &[u8]) -> [u8; TAG_LEN] {
        let full = self.for_next(&[frame]).finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Whether `tag` is the tag of the next frame received, whose body is
    /// `body` (checked in constant time).
    pub fn open(&mut self, body: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let Ok(len) = u32::try_from(body.len()) else {
            return false;
        };
        self.for_next(&[&len.to_be_bytes(), body])
            .verify_truncated_left(tag)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_racing_to_create_the_cookie_file_all_use_the_winner() {
        let dir = std::env::temp_dir().join(format!("lbmkv-cookie-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(COOKIE_FILE);
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || cookie_file(&path, [i; 32]).unwrap())
            })
            .collect();
        let cookies: Vec<Vec<u8>> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(
            cookies.iter().all(|c| *c == on_disk),
            "every racer uses the file's cookie"
        );
        assert_eq!(on_disk.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no file written aside is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn transcript<'a>(
        a: &'a ActorId,
        b: &'a ActorId,
        n1: &'a [u8; 32],
        n2: &'a [u8; 32],
    ) -> Transcript<'a> {
        Transcript {
            version: 3,
            initiator: a,
            initiator_listen: "10.0.0.1:7000",
            initiator_nonce: n1,
            acceptor: b,
            acceptor_listen: "10.0.0.2:7000",
            acceptor_nonce: n2,
        }
    }

    #[test]
    fn proofs_verify_only_with_the_same_cookie_role_nonces_and_peers() {
        let (a, b) = (ActorId::new("a", 1), ActorId::new("b", 2));
        let (n1, n2) = ([1u8; 32], [2u8; 32]);
        let t = transcript(&a, &b, &n1, &n2);
        let p = t.proof(b"secret", Role::Initiator);
        assert!(t.verify(b"secret", Role::Initiator, &p));
        assert!(!t.verify(b"other", Role::Initiator, &p));
        assert!(!t.verify(b"secret", Role::Acceptor, &p));
        assert!(!transcript(&a, &b, &n2, &n1).verify(b"secret", Role::Initiator, &p));
        let a2 = ActorId::new("a", 2);
        assert!(!transcript(&a2, &b, &n1, &n2).verify(b"secret", Role::Initiator, &p));
        let moved = Transcript {
            acceptor_listen: "10.0.0.3:7000",
            ..transcript(&a, &b, &n1, &n2)
        };
        assert!(!moved.verify(b"secret", Role::Initiator, &p));
    }

    #[test]
    fn frames_open_only_in_order_in_their_direction_and_unaltered() {
        let (a, b) = (ActorId::new("a", 1), ActorId::new("b", 2));
        let (n1, n2) = ([1u8; 32], [2u8; 32]);
        let t = transcript(&a, &b, &n1, &n2);
        let mut init = t.session(b"secret", Role::Initiator);
        let mut acc = t.session(b"secret", Role::Acceptor);
        let frame = |body: &[u8]| {
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        let (f0, f1) = (frame(b"first"), frame(b"second"));
        let (t0, t1) = (init.send.seal(&f0), init.send.seal(&f1));
        // Sent back to its sender: the other direction's key refuses it.
        assert!(!init.receive.clone().open(b"first", &t0));
        // Out of order, altered or replayed: refused.
        assert!(!acc.receive.clone().open(b"second", &t1));
        assert!(!acc.receive.clone().open(b"firsT", &t0));
        assert!(acc.receive.open(b"first", &t0));
        assert!(!acc.receive.clone().open(b"first", &t0));
        assert!(acc.receive.open(b"second", &t1));
        let other = Transcript {
            initiator_nonce: &n2,
            ..transcript(&a, &b, &n1, &n2)
        };
        let mut foreign = other.session(b"secret", Role::Initiator);
        foreign.send.seal(&f0);
        foreign.send.seal(&f1);
        assert!(!acc
            .receive
            .open(b"third", &foreign.send.seal(&frame(b"third"))));
    }

    #[cfg(unix)]
    #[test]
    fn a_cookie_file_that_group_or_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lbmkv-cookie-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(COOKIE_FILE);
        std::fs::write(&path, "secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = cookie_file(&path, [0; 32]).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "mode {mode:o}"
            );
            assert!(
                err.message().contains("group or others") && err.message().contains("chmod 600"),
                "{err}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                cookie_file(&path, [0; 32]).unwrap(),
                b"secret",
                "mode {mode:o}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn configured_cookie_wins() {
        assert_eq!(resolve_cookie(Some(b"x"), [0; 32]).unwrap(), b"x");
    }
}
