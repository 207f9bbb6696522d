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

mod ast;
mod error;
mod eval;
mod lexer;
mod parser;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::str::FromStr;

use ast::Expr;
pub use error::RequirementError;
pub use eval::Attributes;

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
        parser::parse(src).map(|root| Requirement { root })
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

#[cfg(test)]
mod tests {
    use crate::requirement::test_support::*;
    use crate::requirement::*;

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
