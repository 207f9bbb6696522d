//! TLS for the fleet-scale scenarios (`scale --tls`): a CA and a server
//! certificate for 127.0.0.1 made with openssl, msched's `--tls-cert` /
//! `--tls-key` flags, and the client setup that trusts the CA.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use tonic::transport::{Certificate, ClientTlsConfig};

/// The name the server certificate is for (its SAN also holds 127.0.0.1).
const SERVER_NAME: &str = "localhost";

/// A server certificate signed by a new CA, written under `dir`.
pub struct ServerTls {
    /// msched's flags that serve it.
    pub flags: Vec<String>,
    /// What a client trusts and checks the certificate against.
    pub client: ClientTlsConfig,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (scale --tls makes its certificates with it: install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes a P-256 CA and a server certificate for [`SERVER_NAME`] and 127.0.0.1 in `dir`.
pub fn make(dir: &Path) -> Result<ServerTls> {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(key);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=msfleet-load CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca)?;
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\n"
        ),
    )?;
    let mut csr = vec!["req"];
    csr.extend(key);
    let subj = format!("/CN={SERVER_NAME}");
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subj,
    ]);
    openssl(dir, &csr)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )?;
    let ca_pem = std::fs::read(dir.join("ca.pem"))?;
    let path = |f: &str| dir.join(f).display().to_string();
    Ok(ServerTls {
        flags: vec![
            "--tls-cert".into(),
            path("server.pem"),
            "--tls-key".into(),
            path("server.key"),
        ],
        client: ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(SERVER_NAME),
    })
}

/// `http://HOST:PORT` as the `https://` URL of the same address.
pub fn https(addr: &str) -> String {
    format!("https://{}", addr.trim_start_matches("http://"))
}
