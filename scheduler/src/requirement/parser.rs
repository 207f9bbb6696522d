//! The parser: tokens to a type-checked [`Expr`], with the errors and hints
//! for everything that does not fit the grammar or the attribute types.

use super::ast::{Expr, StrOp};
use super::error::{clip, RequirementError};
use super::lexer::{Lexer, Tok, Token};
use super::{LABEL_PREFIX, MAX_DEPTH, MAX_LEN, NUMERIC_ATTRIBUTES, STRING_ATTRIBUTES};

/// Characters that would make a `=~` pattern look like a regular expression.
const REGEX_METACHARS: &[char] = &[
    '^', '$', '.', '*', '+', '?', '|', '(', ')', '[', ']', '{', '}', '\\',
];

const OPERATORS_HELP: &str = "use one of == != < <= > >= =~ !~ or in";

/// Parses and type-checks `src`: `None` for an empty or all-whitespace `src`
/// (the empty requirement).
pub(super) fn parse(src: &str) -> Result<Option<Expr>, RequirementError> {
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
        return Ok(None);
    }
    let root = parser.parse_or(0)?;
    let next = parser.bump()?;
    match next.tok {
        Tok::End => Ok(Some(root)),
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
            Err(err.word_operator_help(&next))
        }
    }
}

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

    /// The peeked token, or else the next one from the lexer.
    fn take(&mut self) -> Result<Token, RequirementError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lexer.next_token(),
        }
    }

    fn peek(&mut self) -> Result<&Token, RequirementError> {
        let tok = self.take()?;
        Ok(self.peeked.insert(tok))
    }

    fn bump(&mut self) -> Result<Token, RequirementError> {
        let tok = self.take()?;
        if tok.tok != Tok::End {
            self.last = Some(tok.text.clone());
        }
        Ok(tok)
    }

    /// `and ( "||" and )*`
    fn parse_or(&mut self, depth: usize) -> Result<Expr, RequirementError> {
        self.parse_chain(depth, Tok::OrOr, Self::parse_and, Expr::Or)
    }

    /// `unary ( "&&" unary )*`
    fn parse_and(&mut self, depth: usize) -> Result<Expr, RequirementError> {
        self.parse_chain(depth, Tok::AndAnd, Self::parse_unary, Expr::And)
    }

    /// `operand ( sep operand )*`: the operand alone, or one `node` holding
    /// all of them.
    fn parse_chain(
        &mut self,
        depth: usize,
        sep: Tok,
        operand: fn(&mut Self, usize) -> Result<Expr, RequirementError>,
        node: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, RequirementError> {
        let first = operand(self, depth)?;
        let mut items = Vec::new();
        while self.peek()?.tok == sep {
            self.bump()?;
            items.push(operand(self, depth)?);
        }
        if items.is_empty() {
            Ok(first)
        } else {
            items.insert(0, first);
            Ok(node(items))
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
                    Err(err.word_operator_help(&close))
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
                        format!("expected an expression after '{}'", clip(prev))
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
                RequirementError::at(&tok, format!("unexpected '{}'", clip(&tok.text)))
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
            return Err(RequirementError::at(
                tok,
                format!("missing label key in '{}'", clip(name)),
            )
            .help("write label.<key>, e.g. label.pool"));
        }
        let known = NUMERIC_ATTRIBUTES
            .iter()
            .chain(STRING_ATTRIBUTES)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let known = format!("known: {known}; or {LABEL_PREFIX}<key>");
        let help = match suggest_attribute(name) {
            Some(s) => format!("did you mean '{}'? {known}", clip(&s)),
            None => known,
        };
        Err(RequirementError::at(tok, format!("unknown attribute '{}'", clip(name))).help(help))
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
                        "expected a comparison operator after '{}', found {}",
                        clip(&attr),
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
                        format!(
                            "'{op_str}' matches strings, but '{}' is a numeric attribute",
                            clip(&attr)
                        ),
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
                        format!(
                            "'{op_str}' compares numbers, but '{}' is a string attribute",
                            clip(&attr)
                        ),
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
                format!("expected a value after '{after}', found '{}'", clip(w)),
            )
            .help(format!("strings need double quotes: \"{}\"", clip(w)))),
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
                "'{op}' needs a {} value for {} attribute '{}', got {} {}",
                match want {
                    Kind::Num => "number",
                    Kind::Str => "string",
                },
                want.name(),
                clip(attr),
                got.kind_name(),
                clip(&tok.text)
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
                    Ok(_) => err.help(format!("remove the quotes: {}", clip(s.trim()))),
                    Err(_) => err.help(format!("'{}' holds numbers", clip(attr))),
                })
            }
            Literal::Bool => Err(Self::type_error(tok, op, attr, Kind::Num, &Literal::Bool)
                .help(format!("'{}' holds numbers", clip(attr)))),
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
                .help(format!("put it in double quotes: \"{}\"", clip(&tok.text)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::requirement::test_support::*;
    use crate::requirement::*;

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
        check_error_cases(cases);
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
}
