//! `lbmkv certs`: a cluster CA and a certificate and key per node, for tests
//! and first deployments of mutual TLS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What `lbmkv certs --help` adds after the options.
pub(crate) const AFTER_HELP: &str =
    "Writes DIR/ca.pem and DIR/ca.key (a CA already in DIR, written by this
command, signs the new certificates), and for each name N: DIR/N.pem (DNS name
N) and DIR/N.key (mode 0600).

Start each node with: lbmkv node --name N --tls-cert DIR/N.pem --tls-key DIR/N.key
--tls-ca DIR/ca.pem

exit codes:
  0  success (also: --help, --version)
  1  the files could not be written
  2  usage error: unknown option, bad or missing value";

/// The subject of the CA this command writes; a CA is reused by rebuilding
/// its issuer from it and its key.
const CA_NAME: &str = "lbmkv cluster CA";

/// Options of `lbmkv certs`.
#[derive(Debug, Default, PartialEq, clap::Args)]
pub struct Options {
    /// Where the files go (created when missing)
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// Node names, comma-separated; each must be a DNS name (it is the
    /// certificate's DNS name and the node's name)
    #[arg(long, value_name = "LIST", required = true, value_parser = names)]
    names: Names,
    /// Validity of the node certificates in days [default: 825]
    #[arg(long, value_name = "D", value_parser = clap::value_parser!(u32).range(1..))]
    days: Option<u32>,
    /// Write node certificates that expired yesterday (for tests)
    #[arg(long, conflicts_with = "days")]
    expired: bool,
}

/// Node names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Names(Vec<String>);

/// A comma-separated list of names, blanks around each trimmed.
fn names(v: &str) -> Result<Names, String> {
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        return Err("needs at least one node name".into());
    }
    Ok(Names(list))
}

/// Entry point of `lbmkv certs`.
pub fn main(options: Options) -> ExitCode {
    match write_all(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("lbmkv certs: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a new CA and certificates for `names` into `dir` without a word
/// (for `lbmkv bench`).
pub fn write_quiet(dir: &Path, names: &[&str]) -> Result<(), String> {
    write_files(
        &Options {
            out: Some(dir.to_path_buf()),
            names: Names(names.iter().map(|n| n.to_string()).collect()),
            ..Options::default()
        },
        false,
    )
}

fn write_all(o: &Options) -> Result<(), String> {
    write_files(o, true)
}

fn write_files(o: &Options, verbose: bool) -> Result<(), String> {
    let dir = o.out.as_deref().ok_or("--out DIR is required")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let issuer = ca(dir, verbose)?;
    let today = days_since_epoch();
    for name in &o.names.0 {
        let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let mut params = CertificateParams::new(vec![name.clone()])
            .map_err(|e| format!("node name {name:?} cannot be a DNS name: {e}"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if o.expired {
            validity(
                &mut params,
                today.saturating_sub(30),
                today.saturating_sub(1),
            );
        } else {
            let days = u64::from(o.days.unwrap_or(825));
            validity(&mut params, today.saturating_sub(1), today + days);
        }
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| format!("cannot sign the certificate of {name:?}: {e}"))?;
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        write(&cert_file, cert.pem().as_bytes(), 0o644)?;
        write(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
        if !verbose {
            continue;
        }
        println!(
            "{name}: {} {} (signed by {})",
            cert_file.display(),
            key_file.display(),
            dir.join("ca.pem").display()
        );
    }
    Ok(())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The CA of `dir`: the one there, else a new one written there.
fn ca(dir: &Path, verbose: bool) -> Result<Issuer<'static, KeyPair>, String> {
    let cert_file = dir.join("ca.pem");
    let key_file = dir.join("ca.key");
    match (cert_file.exists(), key_file.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&key_file)
                .map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
            let key = KeyPair::from_pem(&pem)
                .map_err(|e| format!("{} holds no usable key: {e}", key_file.display()))?;
            if verbose {
                println!("CA: reusing {}", cert_file.display());
            }
            Ok(Issuer::new(ca_params(), key))
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
            let mut params = ca_params();
            let today = days_since_epoch();
            validity(&mut params, today.saturating_sub(1), today + 3650);
            let cert = params
                .self_signed(&key)
                .map_err(|e| format!("cannot make the CA: {e}"))?;
            write(&cert_file, cert.pem().as_bytes(), 0o644)?;
            write(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
            if verbose {
                println!("CA: {} {}", cert_file.display(), key_file.display());
            }
            Ok(Issuer::new(params, key))
        }
        _ => Err(format!(
            "{} holds one of ca.pem and ca.key but not the other",
            dir.display()
        )),
    }
}

/// Writes `bytes` to `path` with `mode` (also when the file exists).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(mode);
        let mut f = opts.open(path).map_err(fail)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(fail)?;
        f.write_all(bytes).map_err(fail)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        opts.open(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(fail)
    }
}

fn days_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400
}

/// Sets the validity of `params` from day `from` to day `to` (days since 1970-01-01).
fn validity(params: &mut CertificateParams, from: u64, to: u64) {
    let (y, m, d) = ymd(from);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(to);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The civil date of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn ymd(days: u64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Options, clap::Error> {
        use clap::{Args, FromArgMatches};
        let cmd = Options::augment_args(clap::Command::new("certs"));
        let m = cmd.try_get_matches_from(std::iter::once("certs").chain(list.iter().copied()))?;
        Options::from_arg_matches(&m)
    }

    #[test]
    fn options_need_a_directory_and_names() {
        let o = parse(&["--out", "d", "--names=a,b, c"]).unwrap();
        assert_eq!(o.names.0, vec!["a", "b", "c"]);
        assert!(parse(&["--names", "a"]).is_err());
        assert!(parse(&["--out", "d"]).is_err());
        assert!(parse(&["--out", "d", "--names", " , "]).is_err());
        assert!(parse(&["--out", "d", "--names", "a", "--days", "0"]).is_err());
        assert!(parse(&["--out", "d", "--names", "a", "--days", "3", "--expired"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn dates_are_civil_days() {
        assert_eq!(ymd(0), (1970, 1, 1));
        assert_eq!(ymd(19_723), (2024, 1, 1));
        assert_eq!(ymd(19_782), (2024, 2, 29));
    }

    #[test]
    fn a_second_run_reuses_the_ca_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lbmkv-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = Options {
            out: Some(dir.clone()),
            names: Names(vec!["na".into()]),
            ..Options::default()
        };
        write_all(&o).unwrap();
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        o.names = Names(vec!["nb".into()]);
        write_all(&o).unwrap();
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
        for f in ["ca.key", "na.key", "nb.key"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
