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

    /// The clauses `attrs` fails: each conjunct of a top-level `&&` (else the
    /// whole expression) that is false, in canonical form, with what the
    /// agent has for a simple comparison (`gpu.count >= 1 (has 0)`).
    pub fn failing_clauses(&self, attrs: &Attributes) -> Vec<String> {
        let Some(root) = &self.root else {
            return Vec::new();
        };
        let clauses: Vec<&Expr> = match root {
            Expr::And(items) => items.iter().collect(),
            other => vec![other],
        };
        clauses
            .into_iter()
            .filter(|e| !e.eval(attrs))
            .map(|e| {
                let attr = match e {
                    Expr::Num { attr, .. }
                    | Expr::Str { attr, .. }
                    | Expr::InNum { attr, .. }
                    | Expr::InStr { attr, .. } => Some(attr),
                    _ => None,
                };
                let has = attr.map(|a| match (attrs.num(a), attrs.strs(a)) {
                    (Some(v), _) => format!(" (has {v})"),
                    (None, []) => " (has none)".to_string(),
                    (None, vs) => format!(" (has {})", crate::clip(&vs.join(", "))),
                });
                format!("{e}{}", has.unwrap_or_default())
            })
            .collect()
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
    use msfleet_proto::fuzz::fuzz_config;
    use proptest::prelude::*;

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

    /// Pieces of the language and near misses, for token soup.
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

    /// A valid expression, to depth `depth`, from the same leaves as before.
    fn valid_expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            (prop::sample::select(&[">=", "<", "==", "!="][..]), 0..10u32)
                .prop_map(|(op, n)| format!("gpu.count {op} {n}")),
            (
                prop::sample::select(&["=~", "!~", "==", "!="][..]),
                0..200u32
            )
                .prop_map(|(op, n)| format!("gpu.model {op} \"h{n}\"")),
            (0..3u32, 0..3u32).prop_map(|(a, b)| format!("label.pool in [\"p{a}\", \"p{b}\"]")),
            (0..100u32, 0..100u32).prop_map(|(a, b)| format!("cpu.cores in [{a}, {b}.5]")),
            prop::sample::select(&["true", "false"][..]).prop_map(str::to_owned),
            (0..4u32).prop_map(|n| format!("label.rack != \"a{n}\"")),
        ];
        leaf.prop_recursive(5, 64, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| format!("!{e}")),
                inner.clone().prop_map(|e| format!("({e})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("{a} || {b}")),
            ]
        })
    }

    /// One very long token of each kind the lexer knows (and some it does
    /// not), up to 100 KB: errors must not quote it whole.
    fn long_input() -> impl Strategy<Value = String> {
        (
            prop::sample::select(
                &[
                    "slots > ",
                    "label.a == ",
                    "gpu.count == ",
                    "label.a =~ ",
                    "",
                    "(",
                    "!",
                    "gpu.model ",
                    "label.x in [",
                    "slots > 1 && ",
                ][..],
            ),
            prop::sample::select(
                &[
                    "\"", "1", "label.", "x", "é", "(", "!", ")", "\\", "🚀", " ", "a.b",
                ][..],
            ),
            0..100_000usize,
            prop::sample::select(&["", "\"", " == 1", ")", " x", "1"][..]),
        )
            .prop_map(|(head, unit, n, tail)| format!("{head}{}{tail}", unit.repeat(n)))
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        /// Random bytes: no panic; an accepted input re-parses from its
        /// canonical form; a refusal points into the input with a short message.
        #[test]
        fn fuzz_requirement_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            check_any(&String::from_utf8_lossy(&bytes));
        }

        /// Any string (proptest's unicode generator): the same properties.
        #[test]
        fn fuzz_requirement_random_text(src in "\\PC{0,120}") {
            check_any(&src);
        }

        /// Token soup biased toward the grammar: the same properties.
        #[test]
        fn fuzz_requirement_token_soup(
            pieces in prop::collection::vec(prop::sample::select(PIECES), 0..16),
        ) {
            check_any(&pieces.concat());
        }

        /// Valid expressions parse, and their canonical form parses back to an
        /// equal requirement that prints the same and matches the same agents.
        #[test]
        fn fuzz_requirement_valid_expressions_round_trip(src in valid_expr()) {
            let req = parse(&src);
            let again = parse(&req.to_string());
            prop_assert_eq!(&again, &req, "{}", src);
            prop_assert_eq!(again.to_string(), req.to_string(), "{}", src);
            for a in [h100(), npu(), cpu_only(), mixed(), Attributes::default()] {
                prop_assert_eq!(again.matches(&a), req.matches(&a), "{}", src);
            }
        }

        /// Deep nesting of `(` and `!` (up to 100 000 levels, mixed, closed or
        /// not): never a stack overflow; past MAX_DEPTH always an error at the
        /// first level too deep.
        #[test]
        fn fuzz_requirement_deep_nesting(
            opens in prop::collection::vec(prop::sample::select(&["(", "!", " ", "(!"][..]), 0..64),
            repeat in 1..2_000usize,
            close in any::<bool>(),
        ) {
            let head = opens.concat().repeat(repeat);
            let depth = head.matches(['(', '!']).count();
            let parens = head.matches('(').count();
            let tail = if close { ")".repeat(parens) } else { String::new() };
            let src = format!("{head}true{tail}");
            check_any(&src);
            if depth > MAX_DEPTH {
                prop_assert!(Requirement::parse(&src).is_err(), "{} levels accepted", depth);
            } else if close && src.chars().count() <= MAX_LEN {
                prop_assert!(Requirement::parse(&src).is_ok(), "{}", src);
            }
        }

        /// Inputs with one huge token (up to 100 KB): refused or accepted like
        /// any other, and a refusal's message stays under the bound.
        #[test]
        fn fuzz_requirement_long_tokens(src in long_input()) {
            check_any(&src);
        }
    }

    /// A regression found by `fuzz_requirement_long_tokens`: errors quoted the
    /// offending token whole, so a 4 KB string made a 4 KB message.
    #[test]
    fn errors_quote_long_tokens_cut_short() {
        let long = "x".repeat(4000);
        for src in [
            format!("\"{long}\""),
            format!("label.{long} > 1"),
            format!("{long} == 1"),
            format!("slots == \"{long}\""),
            format!("label.a == {long}"),
            format!("slots > 1{}", "0".repeat(4000)),
            format!("slots > 1 {long}"),
        ] {
            let err = parse_err(&src);
            check_error_invariants(&src, &err);
            assert!(err.to_string().contains("..."), "{err}");
        }
    }
}
