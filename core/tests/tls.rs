//! Mutual TLS over loopback TCP: TLS nodes replicate; a certificate from
//! another CA, an expired one, or one that names another node is refused with
//! a warning on both sides; plain-text and TLS nodes refuse each other and
//! say why on both sides; bad TLS files fail the start naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{config, runtime, wait_until};
use lbmkv::{Config, ErrorKind, LogLevel, Node, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Warnings as (target, message), of every node of the process.
type Warnings = Arc<Mutex<Vec<(String, String)>>>;

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

/// Waits until a warning logged by node `node` contains every one of `parts`.
async fn wait_warned(node: &str, parts: &[&str]) {
    let tag = format!("node={node}#");
    let w = warnings();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if w.lock()
                .unwrap()
                .iter()
                .any(|(_, m)| m.contains(&tag) && parts.iter().all(|p| m.contains(p)))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if found.is_err() {
        let all = w.lock().unwrap().clone();
        panic!("no warning of {node} with {parts:?}; warnings: {all:#?}");
    }
}

/// A CA that signs node certificates into a directory of its own.
struct Ca {
    dir: PathBuf,
    ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(test: &str, label: &str) -> Ca {
        let dir =
            std::env::temp_dir().join(format!("lbmkv-tls-{}-{test}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("lbmkv test CA {label}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Ca {
            dir,
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    /// Files of a certificate for `names`; `expired`: valid only in 2020.
    fn node(&self, file: &str, names: &[&str], expired: bool) -> TlsConfig {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        write_private(&key_file, key.serialize_pem().as_bytes());
        TlsConfig {
            cert: cert_file,
            key: key_file,
            ca: self.ca.clone(),
        }
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn tls_config(name: &str, tls: TlsConfig) -> Config {
    Config {
        tls: Some(tls),
        ..config(name)
    }
}

#[test]
fn three_tls_nodes_replicate_a_put() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("replicate", "a");
    runtime().block_on(async {
        let a = Node::start(tls_config("ta", ca.node("ta", &["ta"], false)))
            .await
            .unwrap();
        let b = Node::start(Config {
            seeds: vec![a.address().to_string()],
            ..tls_config("tb", ca.node("tb", &["tb"], false))
        })
        .await
        .unwrap();
        let c = Node::start(Config {
            seeds: vec![a.address().to_string()],
            ..tls_config("tc", ca.node("tc", &["tc"], false))
        })
        .await
        .unwrap();
        wait_until(Duration::from_secs(10), || {
            [&a, &b, &c].iter().all(|n| n.members().unwrap().len() == 3)
        })
        .await;
        let t = b.create_table("t").await.unwrap();
        t.put(b"k", b"over tls").await.unwrap();
        for n in [&a, &b, &c] {
            let t = n.create_table("t").await.unwrap();
            assert_eq!(t.get(b"k").unwrap(), Some(b"over tls".to_vec()));
        }
        for n in [a, b, c] {
            n.close().await.unwrap();
        }
    });
}

#[test]
fn a_node_without_a_name_takes_the_first_name_of_its_certificate() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("default-name", "a");
    runtime().block_on(async {
        let node = Node::start(Config {
            name: None,
            ..tls_config("unused", ca.node("n", &["db-1.example", "db-1"], false))
        })
        .await
        .unwrap();
        assert_eq!(node.name(), "db-1.example");
        node.close().await.unwrap();
    });
}

/// Starts `keeper` with a good certificate and `guest` with `guest_tls`
/// seeded at the keeper, then has the keeper dial the guest as well, so that
/// both sides meet the bad certificate as dialer and as acceptor; returns
/// the keeper's error from its dial.
async fn refused_both_ways(
    keeper: &str,
    guest: &str,
    ca: &Ca,
    guest_tls: TlsConfig,
) -> (Node, Node, lbmkv::Error) {
    let k = Node::start(tls_config(keeper, ca.node(keeper, &[keeper], false)))
        .await
        .unwrap();
    let g = Node::start(Config {
        seeds: vec![k.address().to_string()],
        ..tls_config(guest, guest_tls)
    })
    .await
    .unwrap();
    let err = match k.connect(g.address()).await {
        Ok(()) => panic!("{keeper} connected to {guest}"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    (k, g, err)
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_both_sides_say_why() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("other-ca", "a");
    let other = Ca::new("other-ca", "b");
    runtime().block_on(async {
        // The guest trusts the cluster's CA but holds a certificate of another.
        let mut guest_tls = other.node("xg", &["xg"], false);
        guest_tls.ca = ca.ca.clone();
        let (k, g, err) = refused_both_ways("xk", "xg", &ca, guest_tls).await;
        // The guest dials: the keeper checks its certificate, the guest hears why.
        wait_warned(
            "xk",
            &["refused a connection", "not signed by this cluster's CA"],
        )
        .await;
        wait_warned(
            "xg",
            &["dial refused", "the peer refused this node's certificate"],
        )
        .await;
        // The keeper dials: it finds the guest's certificate bad, the guest hears why.
        assert!(
            err.message().contains("not signed by this cluster's CA"),
            "{err}"
        );
        wait_warned(
            "xg",
            &[
                "refused a connection",
                "the peer refused this node's certificate",
            ],
        )
        .await;
        assert_eq!(k.members().unwrap(), vec!["xk"]);
        assert_eq!(g.members().unwrap(), vec!["xg"]);
        k.close().await.unwrap();
        g.close().await.unwrap();
    });
}

#[test]
fn an_expired_certificate_is_refused_and_both_sides_say_why() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("expired", "a");
    runtime().block_on(async {
        let guest_tls = ca.node("eg", &["eg"], true);
        let (k, g, err) = refused_both_ways("ek", "eg", &ca, guest_tls).await;
        wait_warned("ek", &["refused a connection", "certificate has expired"]).await;
        wait_warned(
            "eg",
            &["dial refused", "the peer refused this node's certificate"],
        )
        .await;
        assert!(err.message().contains("certificate has expired"), "{err}");
        wait_warned(
            "eg",
            &[
                "refused a connection",
                "the peer refused this node's certificate",
            ],
        )
        .await;
        // The guest was told at start that its own certificate is expired.
        wait_warned("eg", &["does not verify against its CA", "expired"]).await;
        assert_eq!(k.members().unwrap(), vec!["ek"]);
        assert_eq!(g.members().unwrap(), vec!["eg"]);
        k.close().await.unwrap();
        g.close().await.unwrap();
    });
}

#[test]
fn a_certificate_for_another_node_name_is_refused_and_both_sides_say_why() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("wrong-name", "a");
    runtime().block_on(async {
        // A genuine certificate of the cluster, but for node "wx", used by "wg".
        let guest_tls = ca.node("wx", &["wx"], false);
        let (k, g, err) = refused_both_ways("wk", "wg", &ca, guest_tls).await;
        // The guest dialing: the keeper refuses and tells it.
        wait_warned(
            "wk",
            &[
                "refused a connection",
                "refused node \"wg\"",
                "not for node \"wg\" (it names wx)",
            ],
        )
        .await;
        wait_warned(
            "wg",
            &[
                "dial refused",
                "refused this node",
                "not for node \"wg\" (it names wx)",
            ],
        )
        .await;
        // The keeper dialing: the keeper refuses the guest's certificate, the
        // guest hears why.
        assert!(
            err.message().contains("not for node \"wg\" (it names wx)"),
            "{err}"
        );
        wait_warned(
            "wg",
            &[
                "refused a connection",
                "wk at",
                "refused this node",
                "(it names wx)",
            ],
        )
        .await;
        wait_warned("wg", &["certificate does not name it"]).await;
        assert_eq!(k.members().unwrap(), vec!["wk"]);
        assert_eq!(g.members().unwrap(), vec!["wg"]);
        k.close().await.unwrap();
        g.close().await.unwrap();
    });
}

#[test]
fn a_plain_node_and_a_tls_node_refuse_each_other_and_both_say_why() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("plain", "a");
    runtime().block_on(async {
        let secure = Node::start(tls_config("ps", ca.node("ps", &["ps"], false)))
            .await
            .unwrap();
        let plain = Node::start(Config {
            seeds: vec![secure.address().to_string()],
            ..config("pp")
        })
        .await
        .unwrap();
        wait_warned(
            "ps",
            &["refused a plain-text connection", "this node requires TLS"],
        )
        .await;
        wait_warned(
            "pp",
            &["dial refused", "ps requires TLS", "connected in plain text"],
        )
        .await;
        // The other way round: the TLS node dials the plain one.
        let err = secure.connect(plain.address()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.message().contains("a node without TLS"), "{err}");
        wait_warned(
            "pp",
            &[
                "refused a TLS connection",
                "this node has no TLS configured",
            ],
        )
        .await;
        assert_eq!(secure.members().unwrap(), vec!["ps"]);
        assert_eq!(plain.members().unwrap(), vec!["pp"]);
        secure.close().await.unwrap();
        plain.close().await.unwrap();
    });
}

#[test]
fn a_node_listening_beyond_loopback_without_tls_warns_once_at_start() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    runtime().block_on(async {
        let open = Node::start(Config {
            listen: "0.0.0.0:0".into(),
            ..config("wide")
        })
        .await
        .unwrap();
        wait_warned("wide", &["non-loopback address without TLS"]).await;
        let count = warnings()
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.contains("node=wide") && m.contains("without TLS"))
            .count();
        assert_eq!(count, 1);
        open.close().await.unwrap();
        let closed = Node::start(config("narrow")).await.unwrap();
        closed.close().await.unwrap();
        assert!(!warnings()
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains("node=narrow") && m.contains("without TLS")));
    });
}

#[test]
fn bad_tls_files_fail_the_start_naming_the_file() {
    // The sink first: call sites hit before it exists may stay silent.
    let _warnings = warnings();
    let ca = Ca::new("files", "a");
    let good = ca.node("fa", &["fa"], false);
    runtime().block_on(async {
        let start = |tls: TlsConfig| async move {
            match Node::start(tls_config("fa", tls)).await {
                Ok(_) => panic!("the node started"),
                Err(e) => e,
            }
        };
        let missing = TlsConfig {
            cert: ca.dir.join("nope.pem"),
            ..good.clone()
        };
        let err = start(missing).await;
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("nope.pem"), "{err}");
        assert!(err.message().contains("certificate"), "{err}");

        let garbage = ca.dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = start(TlsConfig {
            ca: garbage.clone(),
            ..good.clone()
        })
        .await;
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.message().contains("garbage.pem") && err.message().contains("no certificate"),
            "{err}"
        );

        use std::os::unix::fs::PermissionsExt;
        let open_key = ca.dir.join("open.key");
        std::fs::copy(&good.key, &open_key).unwrap();
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = start(TlsConfig {
            key: open_key,
            ..good.clone()
        })
        .await;
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.message().contains("open.key") && err.message().contains("chmod 600"),
            "{err}"
        );

        // A key that is not the certificate's.
        let other = ca.node("fb", &["fb"], false);
        let err = start(TlsConfig {
            key: other.key,
            ..good.clone()
        })
        .await;
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.message().contains("cannot be used"), "{err}");

        Node::start(tls_config("fa", good))
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
    });
}
