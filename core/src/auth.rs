//! The cluster secret (the cookie) and the mutual HMAC-SHA256 challenge-response.

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

/// Which side of the handshake computes a proof; part of the MAC input so a
/// proof cannot be reflected back to its sender.
#[derive(Clone, Copy)]
pub enum Role {
    /// The side that connected.
    Initiator,
    /// The side that accepted.
    Acceptor,
}

/// The proof that the prover knows the cookie, bound to both nonces and both actors.
pub fn proof(
    cookie: &[u8],
    role: Role,
    prover: &ActorId,
    verifier_nonce: &[u8; 32],
    prover_nonce: &[u8; 32],
) -> [u8; 32] {
    mac_for(cookie, role, prover, verifier_nonce, prover_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
pub fn verify(
    cookie: &[u8],
    role: Role,
    prover: &ActorId,
    verifier_nonce: &[u8; 32],
    prover_nonce: &[u8; 32],
    proof: &[u8; 32],
) -> bool {
    mac_for(cookie, role, prover, verifier_nonce, prover_nonce)
        .verify_slice(proof)
        .is_ok()
}

fn mac_for(
    cookie: &[u8],
    role: Role,
    prover: &ActorId,
    verifier_nonce: &[u8; 32],
    prover_nonce: &[u8; 32],
) -> HmacSha256 {
    // HMAC takes keys of any length: the error case does not exist for it.
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(cookie)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(match role {
        Role::Initiator => b"lbmkv-initiator",
        Role::Acceptor => b"lbmkv-acceptor\0",
    });
    mac.update(prover.name.as_bytes());
    mac.update(&[0]);
    mac.update(&prover.incarnation.to_be_bytes());
    mac.update(verifier_nonce);
    mac.update(prover_nonce);
    mac
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

    #[test]
    fn proofs_verify_only_with_the_same_cookie_role_and_nonces() {
        let a = ActorId::new("a", 1);
        let (n1, n2) = ([1u8; 32], [2u8; 32]);
        let p = proof(b"secret", Role::Initiator, &a, &n1, &n2);
        assert!(verify(b"secret", Role::Initiator, &a, &n1, &n2, &p));
        assert!(!verify(b"other", Role::Initiator, &a, &n1, &n2, &p));
        assert!(!verify(b"secret", Role::Acceptor, &a, &n1, &n2, &p));
        assert!(!verify(b"secret", Role::Initiator, &a, &n2, &n1, &p));
        assert!(!verify(
            b"secret",
            Role::Initiator,
            &ActorId::new("a", 2),
            &n1,
            &n2,
            &p
        ));
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
