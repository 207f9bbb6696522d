//! `msctl dashboard`: a login link to msched's web dashboard, as Jupyter
//! prints one: `http://HOST:PORT/?token=TOKEN` logs the browser in (an
//! HttpOnly cookie) and drops the token from the address.

use crate::CtlError;
use std::path::Path;

/// The dashboard's address from msched's ready file (`http ADDR` on a line
/// of its own, written when msched serves `--http-listen`).
pub fn http_from_ready_file(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::input(format!("reading the ready file {}: {e}", path.display())))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("http ").map(|a| a.trim().to_string()))
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            CtlError::input(format!(
                "the ready file {} names no HTTP listener: start msched with --http-listen",
                path.display()
            ))
        })
}

/// The login link for `http` (HOST:PORT, or a URL) and `token`; `tls` picks
/// https for a bare address (the HTTP listener serves TLS when gRPC does).
pub fn login_link(http: &str, tls: bool, token: &str) -> Result<String, CtlError> {
    let http = http.trim().trim_end_matches('/');
    if http.is_empty() {
        return Err(CtlError::input(
            "the dashboard address is empty: give --http HOST:PORT",
        ));
    }
    let base = if http.starts_with("http://") || http.starts_with("https://") {
        http.to_string()
    } else {
        format!("{}://{http}", if tls { "https" } else { "http" })
    };
    // A bound-to-all-interfaces address is no place for a browser to go.
    let base = base
        .replace("://0.0.0.0:", "://127.0.0.1:")
        .replace("://[::]:", "://[::1]:");
    let token = token.trim();
    if token.is_empty() {
        return Err(CtlError::input(
            "no token: give --token-file, set MSFLEET_TOKEN, or write ~/.config/msfleet/token",
        ));
    }
    let mut encoded = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~') {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!("{base}/?token={encoded}"))
}

/// Opens `link` in the desktop's browser.
pub fn open(link: &str) -> Result<(), CtlError> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let status = std::process::Command::new(opener)
        .arg(link)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| CtlError::infra(format!("--open: running {opener}: {e}")))?;
    if !status.success() {
        return Err(CtlError::infra(format!(
            "--open: {opener} exited with {status}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_logs_in_with_the_token_and_picks_the_scheme() {
        assert_eq!(
            login_link("127.0.0.1:9100", false, "msfleet_ab12").unwrap(),
            "http://127.0.0.1:9100/?token=msfleet_ab12"
        );
        assert_eq!(
            login_link("0.0.0.0:9100", true, "a b+").unwrap(),
            "https://127.0.0.1:9100/?token=a%20b%2B"
        );
        assert_eq!(
            login_link("http://dash.example:80/", true, "t").unwrap(),
            "http://dash.example:80/?token=t"
        );
        assert_eq!(
            login_link("h:1", false, " ").unwrap_err().code,
            crate::exit::BAD_INPUT
        );
        assert!(login_link("", false, "t").is_err());
    }

    #[test]
    fn the_address_comes_from_the_ready_files_http_line() {
        let dir = tempfile_dir();
        let ready = dir.join("ready");
        std::fs::write(&ready, "127.0.0.1:7070\nhttp 127.0.0.1:9100").unwrap();
        assert_eq!(http_from_ready_file(&ready).unwrap(), "127.0.0.1:9100");
        std::fs::write(&ready, "127.0.0.1:7070").unwrap();
        let e = http_from_ready_file(&ready).unwrap_err();
        assert!(e.message.contains("--http-listen"), "{}", e.message);
        assert!(http_from_ready_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("msctl-dashboard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
