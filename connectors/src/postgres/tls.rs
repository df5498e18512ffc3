//! TLS to PostgreSQL the way libpq users expect it: the connection string's `sslmode`
//! (`disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`), `sslrootcert`
//! (a PEM file, or `system` for the system's trusted CAs), and `sslcert` + `sslkey` for a
//! client certificate, through OpenSSL (the library rdkafka's `ssl` feature links already).
//!
//! tokio-postgres knows `disable`, `prefer` and `require` only, and no certificate keys, so
//! [`parse`] takes these keys out of the string (either form: URL query or `key=value`) and
//! hands the rest to [`postgres::Config`]. What each mode checks:
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` | when the server offers TLS | no |
//! | `require` | always | no (as `verify-ca` when `sslrootcert` is given, as in libpq) |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | and its name (or IP address) is the host connected to |
//!
//! `verify-ca`/`verify-full` without `sslrootcert` use libpq's default `~/.postgresql/root.crt`.
//! `sslrootcert=system` implies `verify-full` (a weaker mode is refused, as libpq does).
//! `allow` is refused: weir connects once and would have to guess which way.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::SslMode as ClientSslMode;
use postgres::{Client, NoTls};
use postgres_openssl::MakeTlsConnector;

/// The connection string keys this module handles (taken out before tokio-postgres parses).
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err("sslmode=allow is not supported (use disable or prefer)".into());
            }
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// OpenSSL's default trust store (`sslrootcert=system`).
    System,
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    /// Set only when the string names one (or the mode needs libpq's default file).
    pub root_cert: Option<RootCert>,
    /// Client certificate and its private key (PEM files).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsOptions {
    /// Whether the server's certificate chain is checked.
    fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::Disable | SslMode::Prefer => false,
        }
    }

    /// The OpenSSL connector for these options (reads the certificate files), or `None` for
    /// `sslmode=disable`. Errors name the file and what is wrong with it.
    pub fn connector(&self) -> Result<Option<MakeTlsConnector>, String> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let mut builder = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let verify = self.verifies_chain();
        if verify {
            match &self.root_cert {
                Some(RootCert::File(path)) => {
                    if !path.is_file() {
                        return Err(format!(
                            "sslrootcert {}: no such file (sslmode={} checks the server's \
                             certificate against it)",
                            path.display(),
                            self.mode
                        ));
                    }
                    builder.set_ca_file(path).map_err(|e| {
                        format!(
                            "sslrootcert {}: not a PEM certificate file: {e}",
                            path.display()
                        )
                    })?;
                }
                Some(RootCert::System) | None => builder
                    .set_default_verify_paths()
                    .map_err(|e| format!("sslrootcert=system: {e}"))?,
            }
            builder.set_verify(SslVerifyMode::PEER);
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        if let Some((cert, key)) = &self.client_cert {
            builder
                .set_certificate_chain_file(cert)
                .map_err(|e| format!("sslcert {}: not a PEM certificate: {e}", cert.display()))?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| format!("sslkey {}: not a PEM private key: {e}", key.display()))?;
            builder.check_private_key().map_err(|e| {
                format!(
                    "sslkey {}: does not match sslcert {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?;
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        let verify_name = self.mode == SslMode::VerifyFull;
        connector.set_callback(move |config, _domain| {
            config.set_verify_hostname(verify_name);
            Ok(())
        });
        Ok(Some(connector))
    }
}

/// A parsed connection string: tokio-postgres's settings and ours.
#[derive(Clone)]
pub struct PgConnect {
    pub config: postgres::Config,
    pub tls: TlsOptions,
    connector: Option<MakeTlsConnector>,
}

impl fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres::Config's Debug redacts the password.
        f.debug_struct("PgConnect")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish()
    }
}

impl PgConnect {
    /// Parses a connection string and builds its TLS connector (reading the certificate
    /// files). The error never contains the password.
    pub fn new(url: &str) -> Result<Self, String> {
        let (config, tls) = parse(url)?;
        let connector = tls.connector()?;
        Ok(Self {
            config,
            tls,
            connector,
        })
    }

    /// Opens a connection with these settings (`config` may be a modified copy of
    /// [`PgConnect::config`]).
    pub fn connect_with(&self, config: &postgres::Config) -> Result<Client, postgres::Error> {
        match &self.connector {
            None => config.connect(NoTls),
            Some(tls) => config.connect(tls.clone()),
        }
    }

    pub fn connect(&self) -> Result<Client, postgres::Error> {
        self.connect_with(&self.config)
    }
}

/// Splits a connection string into tokio-postgres's [`postgres::Config`] and the TLS options.
/// Pure: no file is read. The error names the key and never contains the password.
pub fn parse(url: &str) -> Result<(postgres::Config, TlsOptions), String> {
    let (rest, tls_values) = take_tls_keys(url)?;
    let mut config = postgres::Config::from_str(&rest)
        .map_err(|e| format!("not a PostgreSQL connection string ({e})"))?;
    let value = |key: &str| {
        tls_values
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let root_cert = match value("sslrootcert") {
        None => None,
        Some("") => return Err("sslrootcert: must not be empty".into()),
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
    };
    let mode = match value("sslmode") {
        Some(mode) => SslMode::parse(mode)?,
        None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full (got sslmode={mode}): trusting every \
             public CA without checking the host name would accept any server"
        ));
    }
    let root_cert = match (mode, root_cert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => Some(RootCert::File(
            home_file("root.crt").ok_or_else(|| {
                format!("sslmode={mode} needs sslrootcert (and HOME is not set for libpq's default ~/.postgresql/root.crt)")
            })?,
        )),
        (_, root) => root,
    };
    let client_cert = match (value("sslcert"), value("sslkey")) {
        (None, None) => None,
        (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => {
            Some((PathBuf::from(cert), PathBuf::from(key)))
        }
        (Some(_), None) => return Err("sslcert is set but sslkey is not (both or neither)".into()),
        (None, Some(_)) => return Err("sslkey is set but sslcert is not (both or neither)".into()),
        _ => return Err("sslcert and sslkey must not be empty".into()),
    };
    if client_cert.is_some() && mode == SslMode::Disable {
        return Err("sslcert/sslkey are set but sslmode=disable never uses them".into());
    }
    config.ssl_mode(match mode {
        SslMode::Disable => ClientSslMode::Disable,
        SslMode::Prefer => ClientSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientSslMode::Require,
    });
    Ok((
        config,
        TlsOptions {
            mode,
            root_cert,
            client_cert,
        },
    ))
}

fn home_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql").join(name))
}

/// The connection string without the TLS keys, and their (decoded) values in order.
fn take_tls_keys(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let is_tls = |key: &str| TLS_KEYS.contains(&key);
    let mut taken = Vec::new();
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let Some(q) = rest.find('?') else {
            return Ok((url.to_string(), taken));
        };
        let head = &url[..url.len() - rest.len() + q];
        let mut kept = Vec::new();
        for param in rest[q + 1..].split('&') {
            match param.split_once('=') {
                Some((key, value)) if is_tls(key) => {
                    taken.push((key.to_string(), percent_decode(value, key)?));
                }
                _ => kept.push(param),
            }
        }
        let rebuilt = if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        return Ok((rebuilt, taken));
    }
    // Key/value form: `key = value` pairs, values optionally single-quoted with \ escapes.
    let mut kept = String::with_capacity(url.len());
    let mut rest = url.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = rest[key_end..].trim_start();
        let Some(after_eq) = after_key.strip_prefix('=') else {
            // Not a pair: leave it for tokio-postgres to report.
            kept.push_str(rest);
            break;
        };
        let value_text = after_eq.trim_start();
        let (value, len) = if let Some(quoted) = value_text.strip_prefix('\'') {
            let mut value = String::new();
            let mut escaped = false;
            let mut end = None;
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => {
                        value.push(c);
                        escaped = false;
                    }
                    '\\' => escaped = true,
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => value.push(c),
                }
            }
            let Some(end) = end else {
                return Err(format!("{key}: unterminated quoted value"));
            };
            (value, 1 + end)
        } else {
            let len = value_text
                .find(char::is_whitespace)
                .unwrap_or(value_text.len());
            let mut value = String::with_capacity(len);
            let mut escaped = false;
            for c in value_text[..len].chars() {
                if c == '\\' && !escaped {
                    escaped = true;
                } else {
                    value.push(c);
                    escaped = false;
                }
            }
            (value, len)
        };
        let pair_len = rest.len() - value_text.len() + len;
        if is_tls(key) {
            taken.push((key.to_string(), value));
        } else {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(&rest[..pair_len]);
        }
        rest = rest[pair_len..].trim_start();
    }
    Ok((kept, taken))
}

/// Decodes `%XX` escapes of a URL query value.
fn percent_decode(value: &str, key: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{key}: invalid %-escape in {value:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{key}: not UTF-8 once %-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> TlsOptions {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e}")).1
    }

    #[test]
    fn the_default_is_prefer_without_checking_certificates() {
        let (config, tls) = parse("postgres://u@h/db").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.root_cert, None);
        assert!(!tls.verifies_chain());
        assert_eq!(config.get_ssl_mode(), ClientSslMode::Prefer);
    }

    #[test]
    fn each_sslmode_maps_onto_the_client_and_a_check() {
        for (mode, client, verifies) in [
            ("disable", ClientSslMode::Disable, false),
            ("prefer", ClientSslMode::Prefer, false),
            ("require", ClientSslMode::Require, false),
            ("verify-ca", ClientSslMode::Require, true),
            ("verify-full", ClientSslMode::Require, true),
        ] {
            let url = format!("postgres://u@h/db?sslmode={mode}&sslrootcert=/ca.pem");
            let (config, tls) = parse(&url).unwrap();
            assert_eq!(tls.mode.to_string(), mode);
            assert_eq!(config.get_ssl_mode(), client, "{mode}");
            let require_with_root = mode == "require";
            assert_eq!(
                tls.verifies_chain(),
                verifies || require_with_root,
                "{mode}"
            );
            let plain = parse(&format!("host=h user=u sslmode={mode}")).unwrap().1;
            assert_eq!(plain.mode, tls.mode);
        }
        assert!(!opts("postgres://h/db?sslmode=require").verifies_chain());
    }

    #[test]
    fn tls_keys_are_taken_out_and_the_rest_is_kept_in_both_forms() {
        let (rest, taken) = take_tls_keys(
            "postgres://u:p@h:5/db?application_name=a&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=a");
        assert_eq!(
            taken,
            [
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".into(), "/tmp/ca.pem".into())
            ]
        );
        let (rest, _) = take_tls_keys("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://h/db");
        let (rest, taken) = take_tls_keys(
            "host=h password='a b\\'c' sslrootcert = '/my certs/ca.pem' user=u sslmode=require",
        )
        .unwrap();
        assert_eq!(rest, "host=h password='a b\\'c' user=u");
        assert_eq!(
            taken,
            [
                ("sslrootcert".to_string(), "/my certs/ca.pem".to_string()),
                ("sslmode".into(), "require".into())
            ]
        );
        let (config, tls) = parse(&format!("{rest} sslmode=verify-ca sslrootcert=/ca")).unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(tls.root_cert, Some(RootCert::File("/ca".into())));
    }

    #[test]
    fn verify_modes_default_to_libpqs_root_file_and_system_means_verify_full() {
        let tls = opts("postgres://h/db?sslmode=verify-full");
        match tls.root_cert {
            Some(RootCert::File(path)) => assert!(path.ends_with(".postgresql/root.crt")),
            other => panic!("{other:?}"),
        }
        let tls = opts("postgres://h/db?sslrootcert=system");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(RootCert::System));
        let cert = opts("host=h sslmode=require sslcert=/c.pem sslkey=/k.pem");
        assert_eq!(cert.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
    }

    #[test]
    fn impossible_tls_settings_are_refused_with_the_key() {
        for (url, error) in [
            (
                "postgres://h/db?sslmode=verify_full",
                "sslmode=\"verify_full\" is not one of disable, prefer, require, verify-ca, verify-full",
            ),
            (
                "host=h sslmode=allow",
                "sslmode=allow is not supported (use disable or prefer)",
            ),
            (
                "postgres://h/db?sslmode=require&sslrootcert=system",
                "sslrootcert=system needs sslmode=verify-full (got sslmode=require): trusting \
                 every public CA without checking the host name would accept any server",
            ),
            (
                "postgres://h/db?sslcert=/c.pem",
                "sslcert is set but sslkey is not (both or neither)",
            ),
            (
                "host=h sslkey=/k.pem",
                "sslkey is set but sslcert is not (both or neither)",
            ),
            (
                "host=h sslmode=disable sslcert=/c sslkey=/k",
                "sslcert/sslkey are set but sslmode=disable never uses them",
            ),
            ("host=h sslrootcert=''", "sslrootcert: must not be empty"),
            ("host=h sslrootcert='/x", "sslrootcert: unterminated quoted value"),
            (
                "postgres://h/db?sslrootcert=%zz",
                "sslrootcert: invalid %-escape in \"%zz\"",
            ),
        ] {
            assert_eq!(parse(url).unwrap_err(), error, "{url}");
        }
    }

    #[test]
    fn a_missing_or_broken_certificate_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let tls = opts(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ));
        let err = tls.connector().err().unwrap();
        assert_eq!(
            err,
            format!(
                "sslrootcert {}: no such file (sslmode=verify-full checks the server's \
                 certificate against it)",
                missing.display()
            )
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let tls = opts(&format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            junk.display()
        ));
        let err = tls.connector().err().unwrap();
        assert!(
            err.starts_with(&format!("sslrootcert {}: not a PEM", junk.display())),
            "{err}"
        );
        let tls = opts(&format!(
            "host=h sslmode=require sslcert={} sslkey={}",
            junk.display(),
            junk.display()
        ));
        let err = tls.connector().err().unwrap();
        assert!(
            err.starts_with(&format!(
                "sslcert {}: not a PEM certificate",
                junk.display()
            )),
            "{err}"
        );
        assert!(opts("host=h sslmode=disable")
            .connector()
            .unwrap()
            .is_none());
        assert!(opts("host=h sslmode=require")
            .connector()
            .unwrap()
            .is_some());
    }
}
