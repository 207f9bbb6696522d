//! Requirement expressions: which agents may run a job.
//!
//! A job carries a requirement such as
//!
//! ```text
//! gpu.count >= 1 && gpu.model =~ "H100" && gpu.memory_mb >= 40000 && label.pool == "nightly"
//! ```
//!
//! and an agent advertises [`Attributes`]. [`Requirement::matches`] decides
//! whether the agent is eligible. The empty (or all-whitespace) string is the
//! requirement that matches every agent.
//!
//! # Grammar
//!
//! ```text
//! expr       := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | primary
//! primary    := "(" expr ")" | "true" | "false" | comparison
//! comparison := attribute op value
//!             | attribute "in" "[" value ( "," value )* "]"
//! op         := "==" | "!=" | "<" | "<=" | ">" | ">=" | "=~" | "!~"
//! value      := string | number | "true" | "false"
//! string     := '"' ( any char except '"' and '\' | '\"' | '\\' )* '"'
//! number     := "-"? digit+ ( "." digit+ )?
//! attribute  := one of the known attributes below | "label." [A-Za-z0-9_.-]+
//! ```
//!
//! `||` binds loosest, then `&&`, then `!`; `!a == 1` therefore means
//! `!(a == 1)`. Whitespace between tokens is ignored. Input is limited to
//! [`MAX_LEN`] characters and [`MAX_DEPTH`] levels of nested `(` and `!`.
//!
//! # Attributes and types
//!
//! Every attribute has a type fixed by its name: the names in
//! [`NUMERIC_ATTRIBUTES`] are numbers, the names in [`STRING_ATTRIBUTES`] and
//! every `label.<key>` are strings. Type errors are reported when the
//! requirement is parsed, never when it is matched:
//!
//! * `<`, `<=`, `>`, `>=` need a numeric attribute and a number;
//! * `==`, `!=` and `in` need a value of the attribute's type;
//! * `=~`, `!~` need a string attribute and a string.
//!
//! `true` and `false` are constant expressions (`false` matches no agent).
//! As a value they are always a type error, because no attribute is boolean;
//! quote them (`label.spot == "true"`) to compare a label.
//!
//! # Matching
//!
//! * `=~` is **not** a regular expression: `attr =~ "h100"` is true when the
//!   value contains `h100` as a case-insensitive substring. Patterns holding
//!   regex metacharacters (`^ $ . * + ? | ( ) [ ] { } \`) are rejected so
//!   that nobody writes a regex that silently never matches; use `==` for an
//!   exact value such as a dotted version.
//! * `!~` is the negation of `=~`, `!=` the negation of `==`.
//! * String attributes may hold several values (an agent with two GPU
//!   models): `==`, `=~` and `in` are true when *any* value satisfies them,
//!   `!=` and `!~` are true when *no* value does.
//! * A missing attribute makes every comparison false except `!=` and `!~`,
//!   which are true. A missing number is not zero: `gpu.count == 0` is false
//!   on an agent that reports no `gpu.count`; write `!(gpu.count >= 1)`.
//! * Numbers compare as `f64`.
//!
//! [`Requirement`]'s `Display` prints a canonical form (single spaces around
//! operators, `!(...)` around negated comparisons, otherwise only the
//! parentheses the structure needs) that parses back to
//! an equal requirement, as long as it stays within [`MAX_LEN`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest accepted requirement, in characters.
pub const MAX_LEN: usize = 4096;

/// Deepest accepted nesting of `(` and `!`.
pub const MAX_DEPTH: usize = 64;

/// Prefix of the free-form, string-typed label attributes.
pub const LABEL_PREFIX: &str = "label.";

/// Known attributes holding numbers.
pub const NUMERIC_ATTRIBUTES: &[&str] = &[
    "gpu.count",
    "gpu.memory_mb",
    "npu.count",
    "npu.hbm_mb",
    "cpu.cores",
    "memory_mb",
    "disk_free_mb",
    "slots",
];

/// Known attributes holding strings (besides `label.<key>`).
pub const STRING_ATTRIBUTES: &[&str] = &[
    "gpu.model",
    "gpu.driver",
    "gpu.cuda",
    "gpu.compute_capability",
    "npu.model",
    "npu.driver",
    "npu.cann",
    "cpu.model",
    "host.name",
    "host.os",
    "host.arch",
    "python.version",
    "pytest.version",
    "profile",
    "agent.name",
];

/// Characters that would make a `=~` pattern look like a regular expression.
const REGEX_METACHARS: &[char] = &[
    '^', '$', '.', '*', '+', '?', '|', '(', ')', '[', ']', '{', '}', '\\',
];

const OPERATORS_HELP: &str = "use one of == != < <= > >= =~ !~ or in";

// ---------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------

/// What an agent offers: numeric and (possibly multi-valued) string
/// attributes, keyed by the names used in requirements (`gpu.count`,
/// `label.pool`, ...).
///
/// Names are not validated here. A numeric attribute is only looked up among
/// the values set with [`set_num`](Self::set_num), a string attribute only
/// among those set with [`set_str`](Self::set_str) / [`add_str`](Self::add_str).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    nums: BTreeMap<String, f64>,
    strs: BTreeMap<String, Vec<String>>,
}

impl Attributes {
    /// Sets numeric attribute `name` to `v`, replacing any previous value.
    pub fn set_num(&mut self, name: &str, v: f64) {
        self.nums.insert(name.to_owned(), v);
    }

    /// Sets string attribute `name` to the single value `v`, replacing any
    /// previous values.
    pub fn set_str(&mut self, name: &str, v: impl Into<String>) {
        self.strs.insert(name.to_owned(), vec![v.into()]);
    }

    /// Adds `v` to the values of string attribute `name` (a duplicate value is
    /// kept only once). A comparison is true if any value satisfies it; `!=`
    /// and `!~` are true if no value equals / contains the literal.
    pub fn add_str(&mut self, name: &str, v: impl Into<String>) {
        let v = v.into();
        let values = self.strs.entry(name.to_owned()).or_default();
        if !values.contains(&v) {
            values.push(v);
        }
    }

    /// The value of numeric attribute `name`, if set.
    pub fn num(&self, name: &str) -> Option<f64> {
        self.nums.get(name).copied()
    }

    /// The values of string attribute `name`; empty if unset.
    pub fn strs(&self, name: &str) -> &[String] {
        self.strs.get(name).map_or(&[], Vec::as_slice)
    }

    /// Removes attribute `name` (numeric and string values alike).
    pub fn remove(&mut self, name: &str) {
        self.nums.remove(name);
        self.strs.remove(name);
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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

fn help_suffix(help: &Option<String>) -> String {
    help.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

impl RequirementError {
    fn new(column: usize, token: impl Into<String>, message: impl Into<String>) -> Self {
        RequirementError {
            column,
            token: token.into(),
            message: message.into(),
            help: None,
        }
    }

    fn at(tok: &Token, message: impl Into<String>) -> Self {
        Self::new(tok.column, tok.text.clone(), message)
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
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

// ---------------------------------------------------------------------------
// AST
// ---------------------------------------------------------------------------

/// Comparison operators on numeric attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Comparison operators on string attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrOp {
    Eq,
    Ne,
    /// `=~`: contains, case-insensitively.
    Contains,
    /// `!~`: does not contain, case-insensitively.
    NotContains,
}

/// Any comparison operator, as lexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Match,
    NotMatch,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Match => "=~",
            Op::NotMatch => "!~",
        }
    }

    fn num_op(self) -> Option<NumOp> {
        Some(match self {
            Op::Eq => NumOp::Eq,
            Op::Ne => NumOp::Ne,
            Op::Lt => NumOp::Lt,
            Op::Le => NumOp::Le,
            Op::Gt => NumOp::Gt,
            Op::Ge => NumOp::Ge,
            Op::Match | Op::NotMatch => return None,
        })
    }

    fn str_op(self) -> Option<StrOp> {
        Some(match self {
            Op::Eq => StrOp::Eq,
            Op::Ne => StrOp::Ne,
            Op::Match => StrOp::Contains,
            Op::NotMatch => StrOp::NotContains,
            Op::Lt | Op::Le | Op::Gt | Op::Ge => return None,
        })
    }
}

impl From<NumOp> for Op {
    fn from(op: NumOp) -> Op {
        match op {
            NumOp::Eq => Op::Eq,
            NumOp::Ne => Op::Ne,
            NumOp::Lt => Op::Lt,
            NumOp::Le => Op::Le,
            NumOp::Gt => Op::Gt,
            NumOp::Ge => Op::Ge,
        }
    }
}

impl From<StrOp> for Op {
    fn from(op: StrOp) -> Op {
        match op {
            StrOp::Eq => Op::Eq,
            StrOp::Ne => Op::Ne,
            StrOp::Contains => Op::Match,
            StrOp::NotContains => Op::NotMatch,
        }
    }
}

/// A type-checked expression tree. `And`/`Or` hold two or more operands;
/// a chain `a && b && c` is one node, `a && (b && c)` two.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Const(bool),
    Num {
        attr: String,
        op: NumOp,
        value: f64,
    },
    Str {
        attr: String,
        op: StrOp,
        value: String,
    },
    InNum {
        attr: String,
        values: Vec<f64>,
    },
    InStr {
        attr: String,
        values: Vec<String>,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    fn eval(&self, attrs: &Attributes) -> bool {
        match self {
            Expr::Const(b) => *b,
            Expr::Num { attr, op, value } => match attrs.num(attr) {
                None => *op == NumOp::Ne,
                Some(v) => match op {
                    NumOp::Eq => v == *value,
                    NumOp::Ne => v != *value,
                    NumOp::Lt => v < *value,
                    NumOp::Le => v <= *value,
                    NumOp::Gt => v > *value,
                    NumOp::Ge => v >= *value,
                },
            },
            Expr::Str { attr, op, value } => {
                let values = attrs.strs(attr);
                match op {
                    StrOp::Eq => values.iter().any(|v| v == value),
                    StrOp::Ne => !values.iter().any(|v| v == value),
                    StrOp::Contains => contains_ci(values, value),
                    StrOp::NotContains => !contains_ci(values, value),
                }
            }
            Expr::InNum { attr, values } => attrs.num(attr).is_some_and(|v| values.contains(&v)),
            Expr::InStr { attr, values } => attrs.strs(attr).iter().any(|v| values.contains(v)),
            Expr::Not(inner) => !inner.eval(attrs),
            Expr::And(items) => items.iter().all(|e| e.eval(attrs)),
            Expr::Or(items) => items.iter().any(|e| e.eval(attrs)),
        }
    }
}

/// Whether any of `values` contains `pattern`, ignoring case.
fn contains_ci(values: &[String], pattern: &str) -> bool {
    let pattern = pattern.to_lowercase();
    values.iter().any(|v| v.to_lowercase().contains(&pattern))
}

fn write_str_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

fn write_list<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    sep: &str,
    mut item: impl FnMut(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        item(f, x)?;
    }
    Ok(())
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Const(b) => write!(f, "{b}"),
            Expr::Num { attr, op, value } => write!(f, "{attr} {} {value}", Op::from(*op).as_str()),
            Expr::Str { attr, op, value } => {
                write!(f, "{attr} {} ", Op::from(*op).as_str())?;
                write_str_literal(f, value)
            }
            Expr::InNum { attr, values } => {
                write!(f, "{attr} in [")?;
                write_list(f, values, ", ", |f, v| write!(f, "{v}"))?;
                f.write_str("]")
            }
            Expr::InStr { attr, values } => {
                write!(f, "{attr} in [")?;
                write_list(f, values, ", ", |f, v| write_str_literal(f, v))?;
                f.write_str("]")
            }
            // `!(x == 1)` rather than the equivalent but misleading `!x == 1`.
            Expr::Not(inner) => match **inner {
                Expr::Const(_) | Expr::Not(_) => write!(f, "!{inner}"),
                _ => write!(f, "!({inner})"),
            },
            Expr::And(items) => write_list(f, items, " && ", |f, e| match e {
                Expr::And(_) | Expr::Or(_) => write!(f, "({e})"),
                _ => write!(f, "{e}"),
            }),
            Expr::Or(items) => write_list(f, items, " || ", |f, e| match e {
                Expr::Or(_) => write!(f, "({e})"),
                _ => write!(f, "{e}"),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Requirement
// ---------------------------------------------------------------------------

/// A parsed, type-checked requirement expression. See the [module
/// docs](self) for the language.
///
/// `Display` prints a canonical form that parses back to an equal value;
/// the default value is the empty requirement, which matches every agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Requirement {
    /// `None` for the empty requirement.
    root: Option<Expr>,
}

impl Requirement {
    /// Parses and type-checks `src`. An empty or all-whitespace `src` gives
    /// the empty requirement.
    pub fn parse(src: &str) -> Result<Requirement, RequirementError> {
        let len = src.chars().count();
        if len > MAX_LEN {
            return Err(RequirementError::new(
                MAX_LEN + 1,
                "",
                format!("requirement is too long ({len} characters; the limit is {MAX_LEN})"),
            )
            .help("shorten it, e.g. by giving the agents a label to match on"));
        }
        let mut parser = Parser::new(src);
        if parser.peek()?.tok == Tok::End {
            return Ok(Requirement::default());
        }
        let root = parser.parse_or(0)?;
        let next = parser.bump()?;
        match next.tok {
            Tok::End => Ok(Requirement { root: Some(root) }),
            Tok::RParen => {
                Err(RequirementError::at(&next, "unexpected ')'").help("it has no matching '('"))
            }
            _ => {
                let err = RequirementError::at(
                    &next,
                    format!(
                        "expected '&&', '||' or end of expression, found {}",
                        next.describe()
                    ),
                );
                Err(match word_operator_help(&next) {
                    Some(h) => err.help(h),
                    None => err,
                })
            }
        }
    }

    /// Whether an agent offering `attrs` satisfies this requirement.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        self.root.as_ref().is_none_or(|e| e.eval(attrs))
    }

    /// Whether this is the empty requirement (parsed from an empty or
    /// all-whitespace string), which matches every agent. A requirement
    /// written as `true` also matches everything but is not empty.
    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            None => Ok(()),
            Some(e) => e.fmt(f),
        }
    }
}

impl FromStr for Requirement {
    type Err = RequirementError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Requirement::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
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
struct Token {
    tok: Tok,
    /// 1-based character column of the first character.
    column: usize,
    /// The source text of the token (empty for `End`).
    text: String,
}

impl Token {
    /// The token as named in error messages.
    fn describe(&self) -> String {
        match &self.tok {
            Tok::End => "end of input".to_owned(),
            Tok::Str(_) => format!("string {}", self.text),
            Tok::Num(_) => format!("number {}", self.text),
            _ => format!("'{}'", self.text),
        }
    }
}

/// Suggests the symbolic operator for `and`, `or` and `not`.
fn word_operator_help(tok: &Token) -> Option<&'static str> {
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

struct Lexer {
    chars: Vec<char>,
    /// Index into `chars` of the next character.
    pos: usize,
}

impl Lexer {
    fn new(src: &str) -> Self {
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

    fn next_token(&mut self) -> Result<Token, RequirementError> {
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
            let err =
                RequirementError::new(start + 1, text.clone(), format!("invalid number '{text}'"));
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
                format!("number '{text}' is out of range"),
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

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// The type of an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Num,
    Str,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Num => "numeric",
            Kind::Str => "string",
        }
    }
}

/// The type of a known attribute or `label.<key>`; `None` if unknown.
fn attribute_kind(name: &str) -> Option<Kind> {
    if name
        .strip_prefix(LABEL_PREFIX)
        .is_some_and(|key| !key.is_empty())
    {
        Some(Kind::Str)
    } else if NUMERIC_ATTRIBUTES.contains(&name) {
        Some(Kind::Num)
    } else if STRING_ATTRIBUTES.contains(&name) {
        Some(Kind::Str)
    } else {
        None
    }
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The known attribute `name` was probably meant to be, if any.
fn suggest_attribute(name: &str) -> Option<String> {
    if let Some((head, key)) = name.split_once('.') {
        if !key.is_empty() && edit_distance(&head.to_ascii_lowercase(), "label") <= 2 {
            return Some(format!("{LABEL_PREFIX}{key}"));
        }
    }
    let lower = name.to_ascii_lowercase();
    NUMERIC_ATTRIBUTES
        .iter()
        .chain(STRING_ATTRIBUTES)
        .map(|known| (edit_distance(&lower, known), *known))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, known)| known.to_owned())
        .or_else(|| (!name.contains('.')).then(|| format!("{LABEL_PREFIX}{name}")))
}

/// A literal value as written, before type checking.
enum Literal {
    Num(f64),
    Str(String),
    Bool,
}

impl Literal {
    fn kind_name(&self) -> &'static str {
        match self {
            Literal::Num(_) => "number",
            Literal::Str(_) => "string",
            Literal::Bool => "boolean",
        }
    }
}

struct Parser {
    lexer: Lexer,
    peeked: Option<Token>,
    /// Text of the last consumed token other than `End`, for
    /// "expected an expression after 'x'".
    last: Option<String>,
}

impl Parser {
    fn new(src: &str) -> Self {
        Parser {
            lexer: Lexer::new(src),
            peeked: None,
            last: None,
        }
    }

    fn peek(&mut self) -> Result<&Token, RequirementError> {
        let tok = match self.peeked.take() {
            Some(t) => t,
            None => self.lexer.next_token()?,
        };
        Ok(self.peeked.insert(tok))
    }

    fn bump(&mut self) -> Result<Token, RequirementError> {
        let tok = match self.peeked.take() {
            Some(t) => t,
            None => self.lexer.next_token()?,
        };
        if tok.tok != Tok::End {
            self.last = Some(tok.text.clone());
        }
        Ok(tok)
    }

    /// `and ( "||" and )*`
    fn parse_or(&mut self, depth: usize) -> Result<Expr, RequirementError> {
        let first = self.parse_and(depth)?;
        let mut items = Vec::new();
        while self.peek()?.tok == Tok::OrOr {
            self.bump()?;
            items.push(self.parse_and(depth)?);
        }
        if items.is_empty() {
            Ok(first)
        } else {
            items.insert(0, first);
            Ok(Expr::Or(items))
        }
    }

    /// `unary ( "&&" unary )*`
    fn parse_and(&mut self, depth: usize) -> Result<Expr, RequirementError> {
        let first = self.parse_unary(depth)?;
        let mut items = Vec::new();
        while self.peek()?.tok == Tok::AndAnd {
            self.bump()?;
            items.push(self.parse_unary(depth)?);
        }
        if items.is_empty() {
            Ok(first)
        } else {
            items.insert(0, first);
            Ok(Expr::And(items))
        }
    }

    fn check_depth(depth: usize, tok: &Token) -> Result<(), RequirementError> {
        if depth > MAX_DEPTH {
            Err(RequirementError::at(
                tok,
                format!(
                    "expression nests too deeply (more than {MAX_DEPTH} levels of '(' and '!')"
                ),
            ))
        } else {
            Ok(())
        }
    }

    /// `"!" unary | "(" expr ")" | "true" | "false" | comparison`
    fn parse_unary(&mut self, depth: usize) -> Result<Expr, RequirementError> {
        let tok = self.bump()?;
        match &tok.tok {
            Tok::Bang => {
                Self::check_depth(depth + 1, &tok)?;
                let inner = self.parse_unary(depth + 1)?;
                Ok(Expr::Not(Box::new(inner)))
            }
            Tok::LParen => {
                Self::check_depth(depth + 1, &tok)?;
                let inner = self.parse_or(depth + 1)?;
                let close = self.bump()?;
                if close.tok == Tok::RParen {
                    Ok(inner)
                } else {
                    let err = RequirementError::at(
                        &close,
                        format!(
                            "expected ')' to close the '(' at column {}, found {}",
                            tok.column,
                            close.describe()
                        ),
                    );
                    Err(match word_operator_help(&close) {
                        Some(h) => err.help(h),
                        None => err,
                    })
                }
            }
            Tok::Ident(w) if w == "true" => Ok(Expr::Const(true)),
            Tok::Ident(w) if w == "false" => Ok(Expr::Const(false)),
            Tok::Ident(w) if w.eq_ignore_ascii_case("not") => {
                Err(RequirementError::at(&tok, "unexpected 'not'").help("use '!' for negation"))
            }
            Tok::Ident(name) => self.parse_comparison(name.clone(), &tok),
            Tok::End => {
                let message = match &self.last {
                    Some(prev) if !prev.is_empty() => {
                        format!("expected an expression after '{prev}'")
                    }
                    _ => "expected an expression".to_owned(),
                };
                Err(RequirementError::at(&tok, message))
            }
            Tok::Str(_) | Tok::Num(_) => Err(RequirementError::at(
                &tok,
                format!("expected an attribute name, found {}", tok.describe()),
            )
            .help("write comparisons as attribute, operator, value, e.g. gpu.model == \"H100\"")),
            _ => Err(
                RequirementError::at(&tok, format!("unexpected '{}'", tok.text))
                    .help("expected an attribute, '(', '!', 'true' or 'false'"),
            ),
        }
    }

    /// Resolves the attribute named by `tok` to its type.
    fn attribute(name: &str, tok: &Token) -> Result<Kind, RequirementError> {
        if let Some(kind) = attribute_kind(name) {
            return Ok(kind);
        }
        if name == LABEL_PREFIX.trim_end_matches('.') || name == LABEL_PREFIX {
            return Err(
                RequirementError::at(tok, format!("missing label key in '{name}'"))
                    .help("write label.<key>, e.g. label.pool"),
            );
        }
        let known = NUMERIC_ATTRIBUTES
            .iter()
            .chain(STRING_ATTRIBUTES)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let known = format!("known: {known}; or {LABEL_PREFIX}<key>");
        let help = match suggest_attribute(name) {
            Some(s) => format!("did you mean '{s}'? {known}"),
            None => known,
        };
        Err(RequirementError::at(tok, format!("unknown attribute '{name}'")).help(help))
    }

    /// `attribute op value | attribute "in" "[" value ("," value)* "]"`,
    /// the attribute already consumed as `attr_tok`.
    fn parse_comparison(
        &mut self,
        attr: String,
        attr_tok: &Token,
    ) -> Result<Expr, RequirementError> {
        let kind = Self::attribute(&attr, attr_tok)?;
        let op_tok = self.bump()?;
        let op = match &op_tok.tok {
            Tok::Op(op) => *op,
            Tok::Ident(w) if w == "in" => return self.parse_in(attr, kind),
            _ => {
                return Err(RequirementError::at(
                    &op_tok,
                    format!(
                        "expected a comparison operator after '{attr}', found {}",
                        op_tok.describe()
                    ),
                )
                .help(OPERATORS_HELP))
            }
        };
        let op_str = op.as_str();
        match kind {
            Kind::Num => {
                let Some(op) = op.num_op() else {
                    return Err(RequirementError::at(
                        &op_tok,
                        format!("'{op_str}' matches strings, but '{attr}' is a numeric attribute"),
                    )
                    .help("compare numbers with == != < <= > >="));
                };
                let value_tok = self.bump()?;
                let literal = Self::literal(&value_tok, op_str)?;
                let value = Self::expect_num(literal, &value_tok, op_str, &attr)?;
                Ok(Expr::Num { attr, op, value })
            }
            Kind::Str => {
                let Some(op) = op.str_op() else {
                    return Err(RequirementError::at(
                        &op_tok,
                        format!("'{op_str}' compares numbers, but '{attr}' is a string attribute"),
                    )
                    .help("compare strings with == != =~ !~"));
                };
                let value_tok = self.bump()?;
                let literal = Self::literal(&value_tok, op_str)?;
                let value = Self::expect_str(literal, &value_tok, op_str, &attr)?;
                if matches!(op, StrOp::Contains | StrOp::NotContains) {
                    if let Some(meta) = value.chars().find(|c| REGEX_METACHARS.contains(c)) {
                        return Err(RequirementError::at(
                            &value_tok,
                            format!("'{op_str}' pattern contains regex syntax '{meta}'"),
                        )
                        .help(format!(
                            "{op_str} matches a case-insensitive substring; regex syntax is not supported; \
                             use == for an exact value such as a version"
                        )));
                    }
                }
                Ok(Expr::Str { attr, op, value })
            }
        }
    }

    /// `"[" value ("," value)* "]"`, after `attr in`.
    fn parse_in(&mut self, attr: String, kind: Kind) -> Result<Expr, RequirementError> {
        let open = self.bump()?;
        if open.tok != Tok::LBracket {
            return Err(RequirementError::at(
                &open,
                format!("expected '[' after 'in', found {}", open.describe()),
            )
            .help("write a list like label.pool in [\"nightly\", \"ci\"]"));
        }
        let mut nums = Vec::new();
        let mut strs = Vec::new();
        let mut after = "[";
        loop {
            let value_tok = self.bump()?;
            if value_tok.tok == Tok::RBracket && after == "[" {
                return Err(RequirementError::at(
                    &value_tok,
                    "'in' needs at least one value",
                ));
            }
            let literal = Self::literal(&value_tok, after)?;
            match kind {
                Kind::Num => nums.push(Self::expect_num(literal, &value_tok, "in", &attr)?),
                Kind::Str => strs.push(Self::expect_str(literal, &value_tok, "in", &attr)?),
            }
            let sep = self.bump()?;
            match sep.tok {
                Tok::Comma => after = ",",
                Tok::RBracket => break,
                _ => {
                    return Err(RequirementError::at(
                        &sep,
                        format!("expected ',' or ']' in the list, found {}", sep.describe()),
                    ))
                }
            }
        }
        Ok(match kind {
            Kind::Num => Expr::InNum { attr, values: nums },
            Kind::Str => Expr::InStr { attr, values: strs },
        })
    }

    /// Reads a literal value from `tok`, which follows `after` (an operator,
    /// `[` or `,`).
    fn literal(tok: &Token, after: &str) -> Result<Literal, RequirementError> {
        match &tok.tok {
            Tok::Num(v) => Ok(Literal::Num(*v)),
            Tok::Str(s) => Ok(Literal::Str(s.clone())),
            Tok::Ident(w) if w == "true" || w == "false" => Ok(Literal::Bool),
            Tok::Ident(w) => Err(RequirementError::at(
                tok,
                format!("expected a value after '{after}', found '{w}'"),
            )
            .help(format!("strings need double quotes: \"{w}\""))),
            _ => Err(RequirementError::at(
                tok,
                format!("expected a value after '{after}', found {}", tok.describe()),
            )
            .help("a value is a number like 42 or a double-quoted string like \"H100\"")),
        }
    }

    fn type_error(
        tok: &Token,
        op: &str,
        attr: &str,
        want: Kind,
        got: &Literal,
    ) -> RequirementError {
        RequirementError::at(
            tok,
            format!(
                "'{op}' needs a {} value for {} attribute '{attr}', got {} {}",
                match want {
                    Kind::Num => "number",
                    Kind::Str => "string",
                },
                want.name(),
                got.kind_name(),
                tok.text
            ),
        )
    }

    fn expect_num(
        lit: Literal,
        tok: &Token,
        op: &str,
        attr: &str,
    ) -> Result<f64, RequirementError> {
        match lit {
            Literal::Num(v) => Ok(v),
            Literal::Str(s) => {
                let err = Self::type_error(tok, op, attr, Kind::Num, &Literal::Str(String::new()));
                Err(match s.trim().parse::<f64>() {
                    Ok(_) => err.help(format!("remove the quotes: {}", s.trim())),
                    Err(_) => err.help(format!("'{attr}' holds numbers")),
                })
            }
            Literal::Bool => Err(Self::type_error(tok, op, attr, Kind::Num, &Literal::Bool)
                .help(format!("'{attr}' holds numbers"))),
        }
    }

    fn expect_str(
        lit: Literal,
        tok: &Token,
        op: &str,
        attr: &str,
    ) -> Result<String, RequirementError> {
        match lit {
            Literal::Str(s) => Ok(s),
            other => Err(Self::type_error(tok, op, attr, Kind::Str, &other)
                .help(format!("put it in double quotes: \"{}\"", tok.text))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8x H100 agent in the nightly pool, rack a3.
    fn h100() -> Attributes {
        let mut a = Attributes::default();
        a.set_num("gpu.count", 8.0);
        a.set_num("gpu.memory_mb", 81559.0);
        a.set_str("gpu.model", "NVIDIA H100 80GB HBM3");
        a.set_num("cpu.cores", 64.0);
        a.set_str("host.os", "linux");
        a.set_str("label.pool", "nightly");
        a.set_str("label.rack", "a3");
        a
    }

    /// An Ascend NPU agent in the ci pool, rack b1.
    fn npu() -> Attributes {
        let mut a = Attributes::default();
        a.set_num("npu.count", 8.0);
        a.set_num("npu.hbm_mb", 65536.0);
        a.set_str("npu.model", "Ascend910B");
        a.set_num("cpu.cores", 192.0);
        a.set_str("label.pool", "ci");
        a.set_str("label.rack", "b1");
        a
    }

    /// A CPU-only agent in rack a3, no pool label.
    fn cpu_only() -> Attributes {
        let mut a = Attributes::default();
        a.set_num("cpu.cores", 16.0);
        a.set_str("label.rack", "a3");
        a
    }

    /// An agent with two different GPU models, in the ci pool, no rack label.
    fn mixed() -> Attributes {
        let mut a = Attributes::default();
        a.set_num("gpu.count", 2.0);
        a.add_str("gpu.model", "NVIDIA A100-SXM4-40GB");
        a.add_str("gpu.model", "NVIDIA H100 PCIe");
        a.set_num("gpu.memory_mb", 40960.0);
        a.set_num("cpu.cores", 32.0);
        a.set_str("label.pool", "ci");
        a
    }

    fn parse(src: &str) -> Requirement {
        match Requirement::parse(src) {
            Ok(r) => r,
            Err(e) => panic!("{src:?} should parse: {e}\n{}", e.render(src)),
        }
    }

    fn parse_err(src: &str) -> RequirementError {
        match Requirement::parse(src) {
            Ok(r) => panic!("{src:?} should not parse, got {r}"),
            Err(e) => e,
        }
    }

    const T: bool = true;
    const F: bool = false;

    #[test]
    fn matching_table() {
        let agents = [h100(), npu(), cpu_only(), mixed()];
        // expected results for [h100, npu, cpu_only, mixed]
        let cases: &[(&str, [bool; 4])] = &[
            ("", [T, T, T, T]),
            ("  \t\n ", [T, T, T, T]),
            (
                r#"gpu.count>=1 && gpu.model=~"H100" && gpu.memory_mb>=40000 && label.pool=="nightly""#,
                [T, F, F, F],
            ),
            (r#"npu.model=~"910""#, [F, T, F, F]),
            (r#"!(label.rack=="a3") || cpu.cores > 16"#, [T, T, F, T]),
            (r#"label.pool in ["nightly","ci"]"#, [T, T, F, T]),
            (r#"label.pool in ["nightly"]"#, [T, F, F, F]),
            (r#"gpu.model =~ "h100""#, [T, F, F, T]),
            (r#"gpu.model =~ "A100""#, [F, F, F, T]),
            (r#"gpu.model =~ """#, [T, F, F, T]),
            (r#"gpu.model !~ "A100""#, [T, T, T, F]),
            (r#"gpu.model !~ "nvidia""#, [F, T, T, F]),
            (r#"gpu.model == "NVIDIA H100 PCIe""#, [F, F, F, T]),
            (r#"gpu.model == "nvidia h100 pcie""#, [F, F, F, F]),
            (r#"gpu.model != "NVIDIA H100 PCIe""#, [T, T, T, F]),
            (r#"label.pool != "nightly""#, [F, T, T, T]),
            ("gpu.count == 0", [F, F, F, F]),
            ("gpu.count == 8", [T, F, F, F]),
            ("gpu.count != 8", [F, T, T, T]),
            ("gpu.count < 4", [F, F, F, T]),
            ("gpu.count <= 2", [F, F, F, T]),
            ("gpu.count > 2", [T, F, F, F]),
            ("gpu.count >= 2", [T, F, F, T]),
            ("cpu.cores >= 32.5", [T, T, F, F]),
            ("cpu.cores > -1", [T, T, T, T]),
            ("cpu.cores in [16, 32]", [F, F, T, T]),
            ("npu.count >= 1 || gpu.count >= 1", [T, T, F, T]),
            (r#"host.os == "linux""#, [T, F, F, F]),
            ("true", [T, T, T, T]),
            ("false", [F, F, F, F]),
            ("!false", [T, T, T, T]),
            ("!true", [F, F, F, F]),
            ("true && false || true", [T, T, T, T]),
            ("true && (false || false)", [F, F, F, F]),
            // `||` binds looser than `&&`
            (
                r#"label.pool == "ci" || gpu.count >= 8 && cpu.cores > 100"#,
                [F, T, F, T],
            ),
            (
                r#"gpu.count >= 8 && cpu.cores > 100 || label.pool == "ci""#,
                [F, T, F, T],
            ),
            (
                r#"(label.pool == "ci" || gpu.count >= 8) && cpu.cores > 100"#,
                [F, T, F, F],
            ),
            // `!` binds tighter than a comparison is split: `!a >= 1` is `!(a >= 1)`
            ("!gpu.count >= 1", [F, T, T, F]),
            ("!!gpu.count >= 1", [T, F, F, T]),
            (r#"!(gpu.count >= 1 && label.pool == "ci")"#, [T, T, T, F]),
            (
                r#"label.rack in ["a3"] && !(label.pool in ["nightly"])"#,
                [F, F, T, F],
            ),
            (r#"gpu.count>=1&&label.pool=="ci""#, [F, F, F, T]),
            (r#"label.x-y.z == "1""#, [F, F, F, F]),
            (r#"label.x-y.z != "1""#, [T, T, T, T]),
            (r#"label.x-y.z !~ "1""#, [T, T, T, T]),
        ];
        for (src, expected) in cases {
            let req = parse(src);
            for (agent, want) in agents.iter().zip(expected) {
                assert_eq!(req.matches(agent), *want, "{src:?} on {agent:?}");
            }
            // The canonical form means the same thing.
            let again = parse(&req.to_string());
            for (agent, want) in agents.iter().zip(expected) {
                assert_eq!(
                    again.matches(agent),
                    *want,
                    "canonical {again} on {agent:?}"
                );
            }
        }
    }

    #[test]
    fn missing_attributes_only_satisfy_negations() {
        let empty = Attributes::default();
        let cases: &[(&str, bool)] = &[
            (r#"gpu.model == "x""#, F),
            (r#"gpu.model != "x""#, T),
            (r#"gpu.model =~ "x""#, F),
            (r#"gpu.model !~ "x""#, T),
            (r#"gpu.model in ["x"]"#, F),
            (r#"label.pool == "x""#, F),
            (r#"label.pool != "x""#, T),
            ("gpu.count == 0", F),
            ("gpu.count != 0", T),
            ("gpu.count < 1", F),
            ("gpu.count <= 1", F),
            ("gpu.count > 1", F),
            ("gpu.count >= 0", F),
            ("gpu.count in [0]", F),
            ("!(gpu.count >= 1)", T),
        ];
        for (src, want) in cases {
            assert_eq!(parse(src).matches(&empty), *want, "{src}");
        }
    }

    #[test]
    fn multi_valued_strings() {
        let mut a = Attributes::default();
        a.add_str("gpu.model", "A100");
        a.add_str("gpu.model", "H100");
        let cases: &[(&str, bool)] = &[
            (r#"gpu.model == "A100""#, T),
            (r#"gpu.model == "H100""#, T),
            (r#"gpu.model == "V100""#, F),
            (r#"gpu.model != "A100""#, F),
            (r#"gpu.model != "V100""#, T),
            (r#"gpu.model =~ "h1""#, T),
            (r#"gpu.model !~ "h1""#, F),
            (r#"gpu.model !~ "v1""#, T),
            (r#"gpu.model in ["V100", "H100"]"#, T),
            (r#"gpu.model in ["V100"]"#, F),
            (r#"gpu.model == "A100" && gpu.model == "H100""#, T),
        ];
        for (src, want) in cases {
            assert_eq!(parse(src).matches(&a), *want, "{src}");
        }
    }

    #[test]
    fn attributes_api() {
        let mut a = Attributes::default();
        assert_eq!(a.num("gpu.count"), None);
        assert!(a.strs("gpu.model").is_empty());
        a.set_num("gpu.count", 1.0);
        a.set_num("gpu.count", 2.0);
        assert_eq!(a.num("gpu.count"), Some(2.0));
        a.add_str("gpu.model", "A");
        a.add_str("gpu.model", "A");
        a.add_str("gpu.model", "B");
        assert_eq!(a.strs("gpu.model"), ["A", "B"]);
        a.set_str("gpu.model", "C");
        assert_eq!(a.strs("gpu.model"), ["C"]);
        // A numeric attribute set as a string is not seen by numeric comparisons.
        a.set_str("cpu.cores", "8");
        assert!(!parse("cpu.cores == 8").matches(&a));
        a.remove("gpu.model");
        a.remove("gpu.count");
        assert!(a.strs("gpu.model").is_empty());
        assert_eq!(a.num("gpu.count"), None);
    }

    #[test]
    fn nan_values_compare_false() {
        let mut a = Attributes::default();
        a.set_num("slots", f64::NAN);
        assert!(!parse("slots >= 0").matches(&a));
        assert!(!parse("slots == 0").matches(&a));
        assert!(parse("slots != 0").matches(&a));
    }

    #[test]
    fn string_escapes_and_unicode() {
        let mut a = Attributes::default();
        a.set_str("label.note", r#"say "hi" \o/"#);
        a.set_str("label.city", "東京, 日本");
        assert!(parse(r#"label.note == "say \"hi\" \\o/""#).matches(&a));
        assert!(parse(r#"label.note =~ "\"HI\"""#).matches(&a));
        assert!(parse(r#"label.city =~ "日本""#).matches(&a));
        assert!(parse(r#"label.city == "東京, 日本""#).matches(&a));
    }

    #[test]
    fn empty_requirement() {
        assert!(Requirement::default().is_empty());
        assert!(parse("").is_empty());
        assert!(parse(" \n\t").is_empty());
        assert_eq!(parse("").to_string(), "");
        assert_eq!(parse(" "), Requirement::default());
        assert!(!parse("true").is_empty());
        assert!(!parse("gpu.count >= 1").is_empty());
        assert!(Requirement::default().matches(&Attributes::default()));
    }

    #[test]
    fn from_str() {
        let r: Requirement = "gpu.count >= 1".parse().unwrap_or_default();
        assert_eq!(r, parse("gpu.count>=1"));
        assert!("gpu.count >=".parse::<Requirement>().is_err());
    }

    #[test]
    fn display_canonical_form() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            (
                r#"gpu.count>=1&&gpu.model=~"H100""#,
                r#"gpu.count >= 1 && gpu.model =~ "H100""#,
            ),
            (
                r#"label.a=="1"||label.b=="2"&&label.c=="3""#,
                r#"label.a == "1" || label.b == "2" && label.c == "3""#,
            ),
            (
                r#"(label.a=="1"||label.b=="2")&&label.c=="3""#,
                r#"(label.a == "1" || label.b == "2") && label.c == "3""#,
            ),
            (
                r#"label.a=="1"&&(label.b=="2"&&label.c=="3")"#,
                r#"label.a == "1" && (label.b == "2" && label.c == "3")"#,
            ),
            (
                r#"(label.a=="1"&&label.b=="2")&&label.c=="3""#,
                r#"(label.a == "1" && label.b == "2") && label.c == "3""#,
            ),
            (
                r#"label.a=="1"||(label.b=="2"||label.c=="3")"#,
                r#"label.a == "1" || (label.b == "2" || label.c == "3")"#,
            ),
            (
                r#"(label.a=="1"&&label.b=="2")||label.c=="3""#,
                r#"label.a == "1" && label.b == "2" || label.c == "3""#,
            ),
            (r#"((label.a=="1"))"#, r#"label.a == "1""#),
            (r#"!(label.rack=="a3")"#, r#"!(label.rack == "a3")"#),
            (r#"!label.rack=="a3""#, r#"!(label.rack == "a3")"#),
            (r#"!!label.rack=="a3""#, r#"!!(label.rack == "a3")"#),
            (
                r#"!(label.a=="1"||label.b=="2")"#,
                r#"!(label.a == "1" || label.b == "2")"#,
            ),
            (r#"label.s=="a\"b\\c""#, r#"label.s == "a\"b\\c""#),
            (r#"label.s=="日本""#, r#"label.s == "日本""#),
            ("cpu.cores in [1,2.5]", "cpu.cores in [1, 2.5]"),
            (
                r#"label.pool in ["nightly","ci"]"#,
                r#"label.pool in ["nightly", "ci"]"#,
            ),
            ("gpu.memory_mb >= 40000.0", "gpu.memory_mb >= 40000"),
            ("gpu.memory_mb >= 007", "gpu.memory_mb >= 7"),
            ("cpu.cores > -1", "cpu.cores > -1"),
            ("cpu.cores != 0.000001", "cpu.cores != 0.000001"),
            ("true&&!false", "true && !false"),
            ("!(true)", "!true"),
            (
                r#"gpu.model!~"a"||gpu.model!="b"||slots<1||slots<=1||slots>1||slots==1"#,
                r#"gpu.model !~ "a" || gpu.model != "b" || slots < 1 || slots <= 1 || slots > 1 || slots == 1"#,
            ),
        ];
        for (src, canonical) in cases {
            let req = parse(src);
            assert_eq!(req.to_string(), *canonical, "display of {src:?}");
            assert_eq!(parse(canonical), req, "round trip of {src:?}");
        }
    }

    #[test]
    fn display_round_trips_exotic_numbers() {
        for v in [0.1, 1e300, 5e-324, 123456789.123, -0.5, 9007199254740993.0] {
            let src = format!("slots == {v}");
            let req = parse(&src);
            assert_eq!(parse(&req.to_string()), req, "{src}");
            let mut a = Attributes::default();
            a.set_num("slots", v);
            assert!(req.matches(&a), "{src}");
        }
    }

    /// (source, column, token, part of the message, part of the help)
    type ErrorCase = (
        &'static str,
        usize,
        &'static str,
        &'static str,
        &'static str,
    );

    #[test]
    fn error_table() {
        let cases: &[ErrorCase] = &[
            (
                r#"gpu.count >= 1 && gpu.modle == "x""#,
                19,
                "gpu.modle",
                "unknown attribute 'gpu.modle'",
                "did you mean 'gpu.model'? known: gpu.count, gpu.memory_mb,",
            ),
            (
                "GPU.count >= 1",
                1,
                "GPU.count",
                "unknown attribute 'GPU.count'",
                "did you mean 'gpu.count'?",
            ),
            (
                r#"labels.pool == "x""#,
                1,
                "labels.pool",
                "unknown attribute",
                "did you mean 'label.pool'?",
            ),
            (
                "foo == 1",
                1,
                "foo",
                "unknown attribute 'foo'",
                "did you mean 'label.foo'? known: gpu.count",
            ),
            (
                "gpu.foo == 1",
                1,
                "gpu.foo",
                "unknown attribute",
                "; or label.<key>",
            ),
            (
                "gpu.count >=",
                13,
                "",
                "expected a value after '>='",
                "a value is",
            ),
            (
                "gpu.count >= && slots > 1",
                14,
                "&&",
                "expected a value after '>=', found '&&'",
                "",
            ),
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
                "gpu.model =~ 5",
                14,
                "5",
                "'=~' needs a string value for string attribute 'gpu.model', got number 5",
                "put it in double quotes: \"5\"",
            ),
            (
                "gpu.model == 100",
                14,
                "100",
                "'==' needs a string value",
                "\"100\"",
            ),
            (
                r#"gpu.count > "8""#,
                13,
                r#""8""#,
                "'>' needs a number value for numeric attribute 'gpu.count', got string \"8\"",
                "remove the quotes: 8",
            ),
            (
                r#"gpu.count == "eight""#,
                14,
                r#""eight""#,
                "'==' needs a number value",
                "'gpu.count' holds numbers",
            ),
            (
                "gpu.count == true",
                14,
                "true",
                "got boolean true",
                "holds numbers",
            ),
            (
                "label.spot == true",
                15,
                "true",
                "'==' needs a string value for string attribute 'label.spot', got boolean true",
                "\"true\"",
            ),
            (
                r#"gpu.model > "a""#,
                11,
                ">",
                "'>' compares numbers, but 'gpu.model' is a string attribute",
                "== != =~ !~",
            ),
            (
                r#"label.pool <= "a""#,
                12,
                "<=",
                "'<=' compares numbers",
                "",
            ),
            (
                r#"gpu.count =~ "8""#,
                11,
                "=~",
                "'=~' matches strings, but 'gpu.count' is a numeric attribute",
                "",
            ),
            (
                r#"gpu.model =~ "H100.*""#,
                14,
                r#""H100.*""#,
                "'=~' pattern contains regex syntax '.'",
                "=~ matches a case-insensitive substring; regex syntax is not supported",
            ),
            (
                r#"gpu.model !~ "^H""#,
                14,
                r#""^H""#,
                "regex syntax '^'",
                "!~ matches a case-insensitive substring",
            ),
            (
                r#"python.version =~ "3.11""#,
                19,
                r#""3.11""#,
                "regex syntax '.'",
                "use == for an exact value",
            ),
            (
                "(gpu.count >= 1))",
                17,
                ")",
                "unexpected ')'",
                "no matching '('",
            ),
            ("()", 2, ")", "unexpected ')'", ""),
            (")", 1, ")", "unexpected ')'", ""),
            (
                "gpu.count >= 1 and cpu.cores > 2",
                16,
                "and",
                "expected '&&', '||' or end of expression, found 'and'",
                "use '&&' instead of 'and'",
            ),
            (
                "gpu.count >= 1 or cpu.cores > 2",
                16,
                "or",
                "found 'or'",
                "use '||'",
            ),
            (
                "gpu.count >= 1 && (cpu.cores > 1 or slots > 1)",
                34,
                "or",
                "expected ')' to close the '(' at column 19, found 'or'",
                "use '||'",
            ),
            (
                "(gpu.count >= 1",
                16,
                "",
                "expected ')' to close the '(' at column 1, found end of input",
                "",
            ),
            (
                "true == 1",
                6,
                "==",
                "expected '&&', '||' or end of expression, found '=='",
                "",
            ),
            (
                "not gpu.count >= 1",
                1,
                "not",
                "unexpected 'not'",
                "use '!'",
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
                r#"label.a == "日本" && gpu.modle == "x""#,
                20,
                "gpu.modle",
                "unknown attribute",
                "",
            ),
            (
                "label.pool == nightly",
                15,
                "nightly",
                "expected a value after '==', found 'nightly'",
                "strings need double quotes: \"nightly\"",
            ),
            (
                r#"label. == "x""#,
                1,
                "label.",
                "missing label key in 'label.'",
                "label.<key>",
            ),
            (
                r#"label == "x""#,
                1,
                "label",
                "missing label key in 'label'",
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
            ("!", 2, "", "expected an expression after '!'", ""),
            ("(", 2, "", "expected an expression after '('", ""),
            (
                "gpu.count >= 1 &&",
                18,
                "",
                "expected an expression after '&&'",
                "",
            ),
            (
                "gpu.count >= 1 || || slots > 1",
                19,
                "||",
                "unexpected '||'",
                "expected an attribute, '(', '!', 'true' or 'false'",
            ),
            (
                "gpu.count",
                10,
                "",
                "expected a comparison operator after 'gpu.count', found end of input",
                "== != < <= > >= =~ !~ or in",
            ),
            (
                "gpu.count 1",
                11,
                "1",
                "expected a comparison operator after 'gpu.count', found number 1",
                "",
            ),
            (
                r#""H100" == gpu.model"#,
                1,
                r#""H100""#,
                "expected an attribute name, found string \"H100\"",
                "gpu.model == \"H100\"",
            ),
            (
                "8 <= gpu.count",
                1,
                "8",
                "expected an attribute name, found number 8",
                "",
            ),
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
            (
                r#"label.pool in "ci""#,
                15,
                r#""ci""#,
                "expected '[' after 'in', found string \"ci\"",
                "",
            ),
            (
                "label.pool in []",
                16,
                "]",
                "'in' needs at least one value",
                "",
            ),
            (
                r#"label.pool in ["a" "b"]"#,
                20,
                r#""b""#,
                "expected ',' or ']' in the list, found string \"b\"",
                "",
            ),
            (
                r#"label.pool in ["a",]"#,
                20,
                "]",
                "expected a value after ','",
                "",
            ),
            (
                r#"label.pool in ["a""#,
                19,
                "",
                "expected ',' or ']' in the list, found end",
                "",
            ),
            (
                r#"cpu.cores in [1, "2"]"#,
                18,
                r#""2""#,
                "'in' needs a number value for numeric attribute 'cpu.cores'",
                "remove the quotes: 2",
            ),
            ("\tgpu.modle == 1", 2, "gpu.modle", "unknown attribute", ""),
        ];
        for &(src, column, token, message, help) in cases {
            let err = parse_err(src);
            let shown = format!("{err}\n{}", err.render(src));
            assert_eq!(err.column, column, "column for {src:?}: {shown}");
            assert_eq!(err.token, token, "token for {src:?}: {shown}");
            assert!(
                err.message.contains(message),
                "message for {src:?}: {shown}"
            );
            let err_help = err.help.clone().unwrap_or_default();
            assert!(err_help.contains(help), "help for {src:?}: {shown}");
            check_error_invariants(src, &err);
        }
    }

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

    #[test]
    fn nesting_depth_limit() {
        let ok = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).matches(&Attributes::default()));
        let deep = format!(
            "{}true{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let err = parse_err(&deep);
        assert_eq!((err.column, err.token.as_str()), (MAX_DEPTH + 1, "("));
        assert!(err.message.contains("nests too deeply"), "{err}");

        let ok = format!("{}true", "!".repeat(MAX_DEPTH));
        assert!(parse(&ok).matches(&Attributes::default()));
        let err = parse_err(&format!("{}true", "!".repeat(MAX_DEPTH + 1)));
        assert_eq!((err.column, err.token.as_str()), (MAX_DEPTH + 1, "!"));

        let err = parse_err(&"!(".repeat(40));
        assert_eq!(err.column, MAX_DEPTH + 1);

        // Far deeper than the limit: an error, not a stack overflow.
        let err = parse_err(&"(".repeat(MAX_LEN));
        assert_eq!(err.column, MAX_DEPTH + 1);
        let err = parse_err(&"!".repeat(MAX_LEN));
        assert_eq!(err.column, MAX_DEPTH + 1);

        // Long flat chains are not nesting.
        let chain = format!("{}true", "true && ".repeat(500));
        let req = parse(&chain);
        assert!(req.matches(&Attributes::default()));
        assert_eq!(parse(&req.to_string()), req);
        let chain = format!("{}false", "false || ".repeat(400));
        assert!(!parse(&chain).matches(&Attributes::default()));
    }

    #[test]
    fn length_limit() {
        let wrap = |n: usize| format!("label.a == \"{}\"", "x".repeat(n - 13));
        assert_eq!(wrap(MAX_LEN).chars().count(), MAX_LEN);
        assert!(Requirement::parse(&wrap(MAX_LEN)).is_ok());
        let err = parse_err(&wrap(MAX_LEN + 1));
        assert_eq!((err.column, err.token.as_str()), (MAX_LEN + 1, ""));
        assert!(
            err.message
                .contains("too long (4097 characters; the limit is 4096)"),
            "{err}"
        );
        // The limit counts characters, not bytes.
        let multibyte = format!("label.a == \"{}\"", "é".repeat(MAX_LEN - 13));
        assert!(Requirement::parse(&multibyte).is_ok());
        let err = parse_err(&"x".repeat(1 << 20));
        assert_eq!(err.column, MAX_LEN + 1);
    }

    #[test]
    fn huge_numbers_are_rejected() {
        let src = format!("slots > 1{}", "0".repeat(400));
        let err = parse_err(&src);
        assert_eq!(err.column, 9);
        assert!(err.message.contains("out of range"), "{err}");
    }

    /// Properties every error must have, whatever the input.
    fn check_error_invariants(src: &str, err: &RequirementError) {
        let len = src.chars().count();
        assert!(err.column >= 1, "{src:?}: {err}");
        assert!(err.column <= len + 1, "{src:?}: {err}");
        let rest: String = src.chars().skip(err.column - 1).collect();
        assert!(
            rest.starts_with(&err.token),
            "{src:?}: token {:?} not at column {}",
            err.token,
            err.column
        );
        assert!(!err.message.is_empty());
        let rendered = err.render(src);
        let mut lines = rendered.split('\n');
        let (Some(first), Some(carets), None) = (lines.next(), lines.next(), lines.next()) else {
            panic!("render of {src:?} is not two lines: {rendered:?}");
        };
        assert_eq!(first.chars().count(), len);
        assert_eq!(carets.chars().position(|c| c == '^'), Some(err.column - 1));
        let _ = err.to_string();
    }

    /// Parses `src` and checks what must hold whether or not it parses.
    fn check_any(src: &str) {
        match Requirement::parse(src) {
            Ok(req) => {
                let canonical = req.to_string();
                if canonical.chars().count() <= MAX_LEN {
                    assert_eq!(
                        Requirement::parse(&canonical).as_ref(),
                        Ok(&req),
                        "{src:?} -> {canonical:?}"
                    );
                }
                for agent in [h100(), npu(), cpu_only(), mixed(), Attributes::default()] {
                    let _ = req.matches(&agent);
                }
            }
            Err(err) => check_error_invariants(src, &err),
        }
    }

    const VALID: &[&str] = &[
        r#"gpu.count>=1 && gpu.model=~"H100" && gpu.memory_mb>=40000 && label.pool=="nightly""#,
        r#"npu.model=~"910""#,
        r#"!(label.rack=="a3") || cpu.cores > 16"#,
        r#"label.pool in ["nightly","ci"]"#,
        r#"label.é_no == "x""#,
        r#"label.city == "日本" && (slots > -1.5 || !true)"#,
        r#"label.q == "a\"b\\c" || cpu.cores in [1, 2]"#,
        "\t( ( gpu.count != 0 ) )\n",
    ];

    #[test]
    fn every_prefix_is_handled() {
        for src in VALID {
            for (i, _) in src.char_indices().chain([(src.len(), ' ')]) {
                check_any(&src[..i]);
            }
            for (i, _) in src.char_indices() {
                check_any(&src[i..]);
            }
        }
    }

    /// A tiny linear congruential generator, so the fuzz tests need no crate
    /// and are reproducible.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_bytes_do_not_panic() {
        let mut rng = Lcg(0x5eed);
        for _ in 0..5000 {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check_any(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn random_token_soup_does_not_panic() {
        const PIECES: &[&str] = &[
            "gpu.count",
            "gpu.model",
            "label.pool",
            "label.é",
            "cpu.cores",
            "slots",
            "foo",
            "==",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "=~",
            "!~",
            "=",
            "&",
            "|",
            "~",
            "&&",
            "||",
            "!",
            "(",
            ")",
            "[",
            "]",
            ",",
            "in",
            "true",
            "false",
            "and",
            "1",
            "-2",
            "3.5",
            "4.",
            "40GB",
            "\"H100\"",
            "\"日本\"",
            "\"a\\\"b\"",
            "\"x",
            "\\",
            "\"",
            "'",
            " ",
            " ",
            "\t",
            "\n",
            "é",
            "日本",
            "🚀",
            "\u{0}",
            "-",
        ];
        let mut rng = Lcg(42);
        let mut parsed = 0;
        for _ in 0..20000 {
            let n = rng.below(12);
            let src: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            if Requirement::parse(&src).is_ok() {
                parsed += 1;
            }
            check_any(&src);
        }
        // The soup is valid often enough to exercise round-tripping.
        assert!(parsed > 100, "only {parsed} random expressions parsed");
    }

    #[test]
    fn random_valid_expressions_round_trip() {
        fn gen(rng: &mut Lcg, depth: usize) -> String {
            let leaf = depth == 0 || rng.below(3) == 0;
            if leaf {
                return match rng.below(6) {
                    0 => format!(
                        "gpu.count {} {}",
                        [">=", "<", "==", "!="][rng.below(4)],
                        rng.below(10)
                    ),
                    1 => format!(
                        "gpu.model {} \"h{}\"",
                        ["=~", "!~", "==", "!="][rng.below(4)],
                        rng.below(200)
                    ),
                    2 => format!(
                        "label.pool in [\"p{}\", \"p{}\"]",
                        rng.below(3),
                        rng.below(3)
                    ),
                    3 => format!("cpu.cores in [{}, {}.5]", rng.below(100), rng.below(100)),
                    4 => ["true", "false"][rng.below(2)].to_owned(),
                    _ => format!("label.rack != \"a{}\"", rng.below(4)),
                };
            }
            match rng.below(4) {
                0 => format!("!{}", gen(rng, depth - 1)),
                1 => format!("({})", gen(rng, depth - 1)),
                2 => format!("{} && {}", gen(rng, depth - 1), gen(rng, depth - 1)),
                _ => format!("{} || {}", gen(rng, depth - 1), gen(rng, depth - 1)),
            }
        }
        let mut rng = Lcg(7);
        let agents = [h100(), npu(), cpu_only(), mixed(), Attributes::default()];
        for _ in 0..2000 {
            let src = gen(&mut rng, 5);
            let req = parse(&src);
            let again = parse(&req.to_string());
            assert_eq!(again, req, "{src}");
            assert_eq!(again.to_string(), req.to_string(), "{src}");
            for a in &agents {
                assert_eq!(again.matches(a), req.matches(a), "{src}");
            }
        }
    }
}
