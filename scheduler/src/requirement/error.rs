//! [`RequirementError`]: what is wrong, at which column, and how to fix it.

use super::lexer::{word_operator_help, Token};

/// A requirement that does not parse, pointing at the offending token.
///
/// Displays as `<message> at column <column> (<help>)`, e.g.
/// `unknown attribute 'gpu.modle' at column 17 (did you mean 'gpu.model'? known: ...)`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at column {column}{}", help_suffix(.help))]
pub struct RequirementError {
    /// 1-based column, counted in characters (not bytes), of the bad token;
    /// one past the last character when the input ended too early.
    pub column: usize,
    /// The offending source text (empty at end of input).
    pub token: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub help: Option<String>,
}

pub(super) use crate::clip;

fn help_suffix(help: &Option<String>) -> String {
    help.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

impl RequirementError {
    pub(super) fn new(column: usize, token: impl Into<String>, message: impl Into<String>) -> Self {
        RequirementError {
            column,
            token: token.into(),
            message: message.into(),
            help: None,
        }
    }

    pub(super) fn at(tok: &Token, message: impl Into<String>) -> Self {
        Self::new(tok.column, tok.text.clone(), message)
    }

    pub(super) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds the hint for `and`, `or` or `not` written as a word, when `tok`
    /// is one.
    pub(super) fn word_operator_help(self, tok: &Token) -> Self {
        match word_operator_help(tok) {
            Some(h) => self.help(h),
            None => self,
        }
    }

    /// Renders `src` (the text that failed to parse) on one line and, below
    /// it, carets under the offending token:
    ///
    /// ```text
    /// gpu.count >= 1 && gpu.modle == "x"
    ///                   ^^^^^^^^^
    /// ```
    ///
    /// Line breaks in `src` are shown as spaces and tabs are copied into the
    /// caret line so that the carets stay aligned. No trailing newline.
    pub fn render(&self, src: &str) -> String {
        let line: String = src
            .chars()
            .map(|c| if matches!(c, '\n' | '\r') { ' ' } else { c })
            .collect();
        let before = self.column.saturating_sub(1);
        let mut carets: String = src
            .chars()
            .chain(std::iter::repeat(' '))
            .take(before)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let width = self.token.chars().count().max(1);
        carets.extend(std::iter::repeat_n('^', width));
        format!("{line}\n{carets}")
    }
}

#[cfg(test)]
mod tests {
    use crate::requirement::test_support::*;

    #[test]
    fn error_display_and_render() {
        let src = r#"gpu.count >= 1 && gpu.modle == "x""#;
        let err = parse_err(src);
        let text = err.to_string();
        assert!(
            text.starts_with(
                "unknown attribute 'gpu.modle' at column 19 (did you mean 'gpu.model'? known: gpu.count, "
            ),
            "{text}"
        );
        assert!(text.ends_with("agent.name; or label.<key>)"), "{text}");
        assert_eq!(
            err.render(src),
            "gpu.count >= 1 && gpu.modle == \"x\"\n                  ^^^^^^^^^"
        );

        let err = parse_err("gpu.count >=");
        assert_eq!(
            err.to_string(),
            "expected a value after '>=', found end of input at column 13 \
             (a value is a number like 42 or a double-quoted string like \"H100\")"
        );
        assert_eq!(err.render("gpu.count >="), "gpu.count >=\n            ^");

        let err = parse_err("(slots > 1))");
        assert_eq!(
            err.to_string(),
            "unexpected ')' at column 12 (it has no matching '(')"
        );

        // Tabs are kept in the caret line, line breaks are flattened.
        let src = "slots > 1 &&\n\tgpu.modle == 1";
        let err = parse_err(src);
        assert_eq!(err.column, 15);
        assert_eq!(
            err.render(src),
            "slots > 1 && \tgpu.modle == 1\n             \t^^^^^^^^^"
        );

        // Columns count characters, not bytes.
        let src = r#"label.a == "日本" && nope == 1"#;
        let err = parse_err(src);
        assert_eq!(err.column, 20);
        assert_eq!(
            err.render(src).lines().nth(1),
            Some("                   ^^^^")
        );
    }
}
