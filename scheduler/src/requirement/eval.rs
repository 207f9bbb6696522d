//! Evaluation: what an agent offers ([`Attributes`]) and whether an
//! expression holds for it.

use std::borrow::Cow;

use super::ast::{Expr, NumOp, StrOp};

/// An attribute's name: the fixed names (`gpu.count`, ...) are not copied
/// for every agent, only built ones (`label.pool`).
type Name = Cow<'static, str>;

/// What an agent offers: numeric and (possibly multi-valued) string
/// attributes, keyed by the names used in requirements (`gpu.count`,
/// `label.pool`, ...).
///
/// Names are not validated here. A numeric attribute is only looked up among
/// the values set with [`set_num`](Self::set_num), a string attribute only
/// among those set with [`set_str`](Self::set_str) / [`add_str`](Self::add_str).
///
/// Every registered agent holds one: two vectors sorted by name (set once,
/// looked up by binary search), not two B-trees whose nodes keep room for 11
/// entries each, and a single string value without a vector of its own (1
/// KiB an agent before, about a third of it now).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    nums: Vec<(Name, f64)>,
    strs: Vec<(Name, Values)>,
}

/// A string attribute's values: nearly always one, held without a vector.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    One(String),
    /// Two or more, each once.
    Many(Vec<String>),
}

impl Values {
    fn as_slice(&self) -> &[String] {
        match self {
            Values::One(v) => std::slice::from_ref(v),
            Values::Many(vs) => vs,
        }
    }

    /// Adds `v` unless it is there already.
    fn add(&mut self, v: String) {
        if self.as_slice().contains(&v) {
            return;
        }
        match self {
            Values::One(first) => *self = Values::Many(vec![std::mem::take(first), v]),
            Values::Many(vs) => vs.push(v),
        }
    }
}

/// Where `name` is among `entries` (sorted by name), or where it would go.
fn find<V>(entries: &[(Name, V)], name: &str) -> Result<usize, usize> {
    entries.binary_search_by(|(k, _)| k.as_ref().cmp(name))
}

/// Sets `name` to `value` in `entries`, keeping them sorted.
fn put<V>(entries: &mut Vec<(Name, V)>, name: Name, value: V) {
    match find(entries, &name) {
        Ok(i) => entries[i].1 = value,
        Err(i) => entries.insert(i, (name, value)),
    }
}

impl Attributes {
    /// Sets numeric attribute `name` to `v`, replacing any previous value.
    pub fn set_num(&mut self, name: impl Into<Name>, v: f64) {
        put(&mut self.nums, name.into(), v);
    }

    /// Sets string attribute `name` to the single value `v`, replacing any
    /// previous values.
    pub fn set_str(&mut self, name: impl Into<Name>, v: impl Into<String>) {
        put(&mut self.strs, name.into(), Values::One(v.into()));
    }

    /// Adds `v` to the values of string attribute `name` (a duplicate value is
    /// kept only once). A comparison is true if any value satisfies it; `!=`
    /// and `!~` are true if no value equals / contains the literal.
    pub fn add_str(&mut self, name: impl Into<Name>, v: impl Into<String>) {
        let (name, v) = (name.into(), v.into());
        match find(&self.strs, &name) {
            Ok(i) => self.strs[i].1.add(v),
            Err(i) => self.strs.insert(i, (name, Values::One(v))),
        }
    }

    /// The value of numeric attribute `name`, if set.
    pub fn num(&self, name: &str) -> Option<f64> {
        find(&self.nums, name).ok().map(|i| self.nums[i].1)
    }

    /// The values of string attribute `name`; empty if unset.
    pub fn strs(&self, name: &str) -> &[String] {
        find(&self.strs, name).map_or(&[], |i| self.strs[i].1.as_slice())
    }

    /// Removes attribute `name` (numeric and string values alike).
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = find(&self.nums, name) {
            self.nums.remove(i);
        }
        if let Ok(i) = find(&self.strs, name) {
            self.strs.remove(i);
        }
    }

    /// Gives back the room the vectors grew beyond their entries (once
    /// every attribute is set).
    pub fn shrink_to_fit(&mut self) {
        self.nums.shrink_to_fit();
        self.strs.shrink_to_fit();
        for (_, values) in &mut self.strs {
            if let Values::Many(vs) = values {
                vs.shrink_to_fit();
            }
        }
    }
}

impl Expr {
    pub(super) fn eval(&self, attrs: &Attributes) -> bool {
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

#[cfg(test)]
mod tests {
    use crate::requirement::test_support::*;
    use crate::requirement::*;

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
    fn attributes_in_any_order_are_all_found_and_equal() {
        let names = [
            "slots",
            "gpu.count",
            "label.pool",
            "agent.name",
            "memory_mb",
            "cpu.cores",
        ];
        let mut forward = Attributes::default();
        let mut backward = Attributes::default();
        for (i, n) in names.iter().enumerate() {
            forward.set_num(n.to_string(), i as f64);
            forward.add_str(format!("{n}.s"), n.to_string());
        }
        for (i, n) in names.iter().enumerate().rev() {
            backward.set_num(*n, i as f64);
            backward.add_str(format!("{n}.s"), n.to_string());
        }
        backward.shrink_to_fit();
        assert_eq!(forward, backward, "the order of setting does not matter");
        for (i, n) in names.iter().enumerate() {
            assert_eq!(backward.num(n), Some(i as f64), "{n}");
            assert_eq!(backward.strs(&format!("{n}.s")), [n.to_string()], "{n}");
        }
        assert_eq!(backward.num("gpu"), None, "no prefix match");
        assert!(parse("slots == 0 && memory_mb == 4 && cpu.cores >= 5").matches(&backward));
        assert!(parse("label.pool.s == \"label.pool\"").matches(&backward));
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
}
