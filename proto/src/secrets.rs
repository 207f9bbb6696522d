//! Secret environment values (`JobSpec.secret_env`): they reach the test
//! process and nothing else. The scheduler shows every spec through
//! [`redacted`]; the agent passes the test's output (and its own texts about
//! the attempt) through a [`Redactor`], so a value printed by a test comes back
//! as [`REDACTED`], also when one read of the pipe ends inside it.

use crate::JobSpec;

/// What is shown in place of a secret value.
pub const REDACTED: &str = "[redacted]";

/// `spec` as anyone but the agent that runs it may see it: every
/// `secret_env` name kept, every value replaced by [`REDACTED`].
pub fn redacted(spec: &JobSpec) -> JobSpec {
    let mut out = spec.clone();
    for v in out.secret_env.values_mut() {
        *v = REDACTED.to_string();
    }
    out
}

/// Replaces every secret value in a byte stream that arrives in pieces.
///
/// [`Redactor::push`] returns what may be shown now; bytes at the end that
/// could be the start of a secret (at most the longest value's length - 1)
/// are kept back until the next piece shows whether they are one.
/// [`Redactor::finish`] returns what was kept back once the stream ends (it
/// holds no whole secret).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Non-empty values, longest first (the longest match wins).
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Redactor {
    /// A redactor for these values; empty values are ignored.
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| v.as_ref().to_vec())
            .filter(|v| !v.is_empty())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor {
            secrets,
            held: Vec::new(),
        }
    }

    /// True when there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The next piece of the stream, redacted, minus a tail kept back.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        self.scan(&buf, false)
    }

    /// What was kept back, redacted, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        self.scan(&held, true)
    }

    /// Copies `buf` with every secret replaced (the longest one that starts at
    /// a position wins). Unless `last`, stops at the first position where the
    /// rest of `buf` is the start of a longer secret than it holds, and keeps
    /// that rest back.
    fn scan(&mut self, buf: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        let longest = self.secrets.first().map_or(0, Vec::len);
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            if !last
                && rest.len() < longest
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                self.held = rest.to_vec();
                break;
            }
            match self.secrets.iter().find(|s| rest.starts_with(s)) {
                Some(s) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += s.len();
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// `text` with every secret replaced (a whole text, nothing kept back).
    pub fn text(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        let mut r = Redactor {
            secrets: self.secrets.clone(),
            held: Vec::new(),
        };
        let mut out = r.push(text.as_bytes());
        out.extend(r.finish());
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut Redactor, pieces: &[&str]) -> String {
        let mut out = Vec::new();
        for p in pieces {
            out.extend(r.push(p.as_bytes()));
        }
        out.extend(r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn views_keep_names_and_hide_values() {
        let spec = JobSpec {
            env: [("PLAIN".to_string(), "visible".to_string())].into(),
            secret_env: [("TOKEN".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        };
        let v = redacted(&spec);
        assert_eq!(v.secret_env["TOKEN"], REDACTED);
        assert_eq!(v.env["PLAIN"], "visible");
        assert_eq!(spec.secret_env["TOKEN"], "hunter2", "the original is kept");
    }

    #[test]
    fn a_value_is_replaced_wherever_the_pieces_split_it() {
        let text = "token=s3cr3t-value; again s3cr3t-value!";
        let want = "token=[redacted]; again [redacted]!";
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut r = Redactor::new(["s3cr3t-value"]);
                let got = all(&mut r, &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(got, want, "cut at {cut}/{cut2}");
            }
        }
        let mut r = Redactor::new(["s3cr3t-value"]);
        let one_byte_at_a_time: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = one_byte_at_a_time.iter().map(String::as_str).collect();
        assert_eq!(all(&mut r, &refs), want);
    }

    #[test]
    fn only_a_possible_start_of_a_secret_is_kept_back() {
        let mut r = Redactor::new(["abcdef"]);
        assert_eq!(r.push(b"hello world\n"), b"hello world\n".to_vec());
        assert_eq!(r.push(b"xx abc"), b"xx ".to_vec());
        assert_eq!(r.push(b"dxx"), b"abcdxx".to_vec(), "not a secret after all");
        assert_eq!(r.finish(), Vec::<u8>::new());
        let mut r = Redactor::new(["abcdef"]);
        assert_eq!(r.push(b"tail ab"), b"tail ".to_vec());
        assert_eq!(
            r.finish(),
            b"ab".to_vec(),
            "the end of the stream shows the rest"
        );
    }

    #[test]
    fn several_secrets_and_overlaps() {
        let mut r = Redactor::new(["aaa", "aaab", "", "zz"]);
        assert_eq!(
            all(&mut r, &["xaaa", "b zz aa", "a"]),
            "x[redacted] [redacted] [redacted]"
        );
        let r = Redactor::new(Vec::<String>::new());
        assert!(r.is_empty());
        assert_eq!(r.text("nothing to hide"), "nothing to hide");
        let r = Redactor::new(["pw"]);
        assert_eq!(r.text("a pw b pwpw"), "a [redacted] b [redacted][redacted]");
    }
}
