//! The lexer: characters to tokens with their columns.

use super::ast::Op;
use super::error::{clip, RequirementError};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// A word: attribute name, `true`, `false` or `in`.
    Ident(String),
    /// A string literal, unescaped.
    Str(String),
    Num(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Bang,
    AndAnd,
    OrOr,
    Op(Op),
    End,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) tok: Tok,
    /// 1-based character column of the first character.
    pub(super) column: usize,
    /// The source text of the token (empty for `End`).
    pub(super) text: String,
}

impl Token {
    /// The token as named in error messages.
    pub(super) fn describe(&self) -> String {
        match &self.tok {
            Tok::End => "end of input".to_owned(),
            Tok::Str(_) => format!("string {}", clip(&self.text)),
            Tok::Num(_) => format!("number {}", clip(&self.text)),
            _ => format!("'{}'", clip(&self.text)),
        }
    }
}

/// Suggests the symbolic operator for `and`, `or` and `not`.
pub(super) fn word_operator_help(tok: &Token) -> Option<&'static str> {
    match &tok.tok {
        Tok::Ident(w) => match w.to_ascii_lowercase().as_str() {
            "and" => Some("use '&&' instead of 'and'"),
            "or" => Some("use '||' instead of 'or'"),
            "not" => Some("use '!' instead of 'not'"),
            _ => None,
        },
        _ => None,
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

const NAME_CHARS_HELP: &str = "names may contain only ASCII letters, digits, '_', '.' and '-'";

pub(super) struct Lexer {
    chars: Vec<char>,
    /// Index into `chars` of the next character.
    pos: usize,
}

impl Lexer {
    pub(super) fn new(src: &str) -> Self {
        Lexer {
            chars: src.chars().collect(),
            pos: 0,
        }
    }

    fn peek_at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    fn text(&self, start: usize, end: usize) -> String {
        self.chars[start..end].iter().collect()
    }

    pub(super) fn next_token(&mut self) -> Result<Token, RequirementError> {
        while self.peek_at(self.pos).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let column = start + 1;
        let Some(c) = self.peek_at(start) else {
            return Ok(Token {
                tok: Tok::End,
                column,
                text: String::new(),
            });
        };
        let next = self.peek_at(start + 1);
        let (tok, len) = match (c, next) {
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('[', _) => (Tok::LBracket, 1),
            (']', _) => (Tok::RBracket, 1),
            (',', _) => (Tok::Comma, 1),
            ('&', Some('&')) => (Tok::AndAnd, 2),
            ('|', Some('|')) => (Tok::OrOr, 2),
            ('=', Some('=')) => (Tok::Op(Op::Eq), 2),
            ('=', Some('~')) => (Tok::Op(Op::Match), 2),
            ('!', Some('=')) => (Tok::Op(Op::Ne), 2),
            ('!', Some('~')) => (Tok::Op(Op::NotMatch), 2),
            ('!', _) => (Tok::Bang, 1),
            ('<', Some('=')) => (Tok::Op(Op::Le), 2),
            ('<', _) => (Tok::Op(Op::Lt), 1),
            ('>', Some('=')) => (Tok::Op(Op::Ge), 2),
            ('>', _) => (Tok::Op(Op::Gt), 1),
            ('"', _) => return self.string(),
            ('-', Some(d)) if d.is_ascii_digit() => return self.number(),
            (d, _) if d.is_ascii_digit() => return self.number(),
            (a, _) if a.is_ascii_alphabetic() || a == '_' => return self.ident(),
            _ => return Err(self.unexpected_char(start)),
        };
        self.pos += len;
        Ok(Token {
            tok,
            column,
            text: self.text(start, start + len),
        })
    }

    fn unexpected_char(&self, at: usize) -> RequirementError {
        let c = self.chars[at];
        let err = RequirementError::new(
            at + 1,
            c.to_string(),
            format!("unexpected character '{}'", c.escape_debug()),
        );
        match c {
            '&' => err.help("use '&&' for 'and'"),
            '|' => err.help("use '||' for 'or'"),
            '=' => err.help("use '==' to test equality"),
            '~' => err.help("use '=~' to match a substring"),
            '\'' => err.help("strings use double quotes"),
            c if c.is_alphanumeric() => err.help(NAME_CHARS_HELP),
            _ => err,
        }
    }

    /// An attribute name or keyword: `[A-Za-z_][A-Za-z0-9_.-]*`.
    fn ident(&mut self) -> Result<Token, RequirementError> {
        let start = self.pos;
        let mut end = start + 1;
        while self.peek_at(end).is_some_and(is_name_char) {
            end += 1;
        }
        if self.peek_at(end).is_some_and(char::is_alphanumeric) {
            // A non-ASCII letter glued to the name, e.g. `label.é`.
            return Err(self.unexpected_char(end));
        }
        self.pos = end;
        let text = self.text(start, end);
        Ok(Token {
            tok: Tok::Ident(text.clone()),
            column: start + 1,
            text,
        })
    }

    /// A number: `-?[0-9]+(\.[0-9]+)?`, not followed by a name character.
    fn number(&mut self) -> Result<Token, RequirementError> {
        let start = self.pos;
        let mut end = start;
        if self.peek_at(end) == Some('-') {
            end += 1;
        }
        let is_digit = |c: char| c.is_ascii_digit();
        while self.peek_at(end).is_some_and(is_digit) {
            end += 1;
        }
        let mut valid = true;
        if self.peek_at(end) == Some('.') {
            end += 1;
            let frac = end;
            while self.peek_at(end).is_some_and(is_digit) {
                end += 1;
            }
            valid = end > frac;
        }
        let mut suffix = false;
        while self
            .peek_at(end)
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '.'))
        {
            suffix = true;
            end += 1;
        }
        let text = self.text(start, end);
        if !valid || suffix {
            let err = RequirementError::new(
                start + 1,
                text.clone(),
                format!("invalid number '{}'", clip(&text)),
            );
            let has_letters = text.chars().any(char::is_alphabetic);
            return Err(if has_letters {
                err.help("numbers take no unit suffix; memory attributes are in MB")
            } else {
                err.help("write numbers like 42 or 0.5")
            });
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                self.pos = end;
                Ok(Token {
                    tok: Tok::Num(v),
                    column: start + 1,
                    text,
                })
            }
            _ => Err(RequirementError::new(
                start + 1,
                text.clone(),
                format!("number '{}' is out of range", clip(&text)),
            )),
        }
    }

    /// A double-quoted string with `\"` and `\\` escapes.
    fn string(&mut self) -> Result<Token, RequirementError> {
        let start = self.pos;
        let mut i = start + 1;
        let mut value = String::new();
        let unterminated = |lexer: &Lexer| {
            RequirementError::new(
                start + 1,
                lexer.text(start, lexer.chars.len()),
                "unterminated string",
            )
            .help("add the closing '\"'")
        };
        loop {
            match self.peek_at(i) {
                None => return Err(unterminated(self)),
                Some('"') => break,
                Some('\\') => match self.peek_at(i + 1) {
                    Some(e @ ('"' | '\\')) => {
                        value.push(e);
                        i += 2;
                    }
                    Some(other) => {
                        return Err(RequirementError::new(
                            i + 1,
                            format!("\\{other}"),
                            format!("invalid escape '\\{}' in string", other.escape_debug()),
                        )
                        .help("the only escapes are \\\" and \\\\"))
                    }
                    None => return Err(unterminated(self)),
                },
                Some(c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        self.pos = i + 1;
        Ok(Token {
            tok: Tok::Str(value),
            column: start + 1,
            text: self.text(start, i + 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::requirement::test_support::*;

    #[test]
    fn lexer_error_table() {
        let cases: &[ErrorCase] = &[
            (
                r#"host.name == "abc"#,
                14,
                r#""abc"#,
                "unterminated string",
                "closing",
            ),
            (
                r#"host.name == "abc\"#,
                14,
                r#""abc\"#,
                "unterminated string",
                "",
            ),
            (
                "label.é==\"x\"",
                7,
                "é",
                "unexpected character 'é'",
                "ASCII",
            ),
            (
                "label.pool == 日本",
                15,
                "日",
                "unexpected character '日'",
                "",
            ),
            (
                "gpu.count = 1",
                11,
                "=",
                "unexpected character '='",
                "use '=='",
            ),
            (
                "gpu.count >= 1 & slots > 1",
                16,
                "&",
                "unexpected character '&'",
                "'&&'",
            ),
            (
                "gpu.count >= 1 |",
                16,
                "|",
                "unexpected character '|'",
                "'||'",
            ),
            ("gpu.count >= 1 #", 16, "#", "unexpected character '#'", ""),
            (
                "gpu.model ~ \"x\"",
                11,
                "~",
                "unexpected character '~'",
                "=~",
            ),
            (
                "label.a == 'x'",
                12,
                "'",
                "unexpected character '\\''",
                "double quotes",
            ),
            ("gpu.count >= -", 14, "-", "unexpected character '-'", ""),
            (
                "gpu.memory_mb >= 40GB",
                18,
                "40GB",
                "invalid number '40GB'",
                "no unit suffix",
            ),
            (
                "cpu.cores > 1.",
                13,
                "1.",
                "invalid number '1.'",
                "like 42 or 0.5",
            ),
            (
                "cpu.cores > 1.2.3",
                13,
                "1.2.3",
                "invalid number '1.2.3'",
                "",
            ),
            ("cpu.cores > 4核", 13, "4核", "invalid number '4核'", ""),
            (
                r#"label.a == "x\n""#,
                14,
                r"\n",
                r"invalid escape '\n' in string",
                r#"the only escapes are \" and \\"#,
            ),
        ];
        check_error_cases(cases);
    }

    #[test]
    fn huge_numbers_are_rejected() {
        let src = format!("slots > 1{}", "0".repeat(400));
        let err = parse_err(&src);
        assert_eq!(err.column, 9);
        assert!(err.message.contains("out of range"), "{err}");
    }
}
