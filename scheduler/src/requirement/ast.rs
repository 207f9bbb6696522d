//! The expression tree: operators, type-checked nodes, and the canonical
//! `Display` form that parses back to an equal tree.

use std::fmt;

/// Comparison operators on numeric attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NumOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Comparison operators on string attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrOp {
    Eq,
    Ne,
    /// `=~`: contains, case-insensitively.
    Contains,
    /// `!~`: does not contain, case-insensitively.
    NotContains,
}

/// Any comparison operator, as lexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
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
    pub(super) fn as_str(self) -> &'static str {
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

    pub(super) fn num_op(self) -> Option<NumOp> {
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

    pub(super) fn str_op(self) -> Option<StrOp> {
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
pub(super) enum Expr {
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

#[cfg(test)]
mod tests {
    use crate::requirement::test_support::*;
    use crate::requirement::*;

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
}
