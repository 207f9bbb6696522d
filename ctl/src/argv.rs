//! Splits a command line given as one string (`--command 'python run.py {case}'`)
//! into argv the way a POSIX shell splits words, without any expansion: no
//! variables, globs, pipes or redirections — the agent runs the argv directly.

/// Splits `line` into words.
///
/// * unquoted whitespace separates words;
/// * `'...'` is literal;
/// * `"..."` is literal except `\"`, `\\`, `\$` and `` \` `` (the escaped
///   character) and backslash-newline (removed);
/// * outside quotes `\x` is `x` (backslash-newline is removed);
/// * quotes join the word around them, and `''` / `""` alone is an empty word.
///
/// Fails on an unterminated quote or a trailing backslash.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word has started (it may still be empty: `''`).
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' quote in: {line}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some('\n') => {}
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(format!("unterminated \" quote in: {line}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" quote in: {line}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(e) => {
                    in_word = true;
                    word.push(e);
                }
                None => return Err(format!("trailing backslash in: {line}")),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    fn ok(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn splits_plain_words_on_any_whitespace() {
        assert_eq!(
            ok("  python   run_case.py\t{case} --name {name}\n"),
            ["python", "run_case.py", "{case}", "--name", "{name}"]
        );
        assert!(ok("").is_empty());
        assert!(ok("   \t ").is_empty());
    }

    #[test]
    fn quotes_group_and_join() {
        assert_eq!(
            ok(r#"python -c 'print("a b")' "x y"z"#),
            ["python", "-c", r#"print("a b")"#, "x yz"]
        );
        assert_eq!(ok(r#"a '' "" b"#), ["a", "", "", "b"]);
        assert_eq!(ok(r#"--k='{case}'"#), ["--k={case}"]);
        // Single quotes keep backslashes; double quotes only escape a few.
        assert_eq!(ok(r"'a\b'"), [r"a\b"]);
        assert_eq!(ok(r#""a\"b\\c\$d\n""#), [r#"a"b\c$d\n"#]);
        assert_eq!(ok(r#""it's""#), ["it's"]);
    }

    #[test]
    fn backslash_escapes_outside_quotes() {
        assert_eq!(ok(r"a\ b c\'d"), ["a b", "c'd"]);
        assert_eq!(ok("a \\\nb"), ["a", "b"]);
        assert_eq!(ok(r"\\"), [r"\"]);
    }

    #[test]
    fn unterminated_input_is_an_error() {
        assert!(split("python 'run").unwrap_err().contains("unterminated '"));
        assert!(split(r#"python "run"#)
            .unwrap_err()
            .contains("unterminated \""));
        assert!(split(r#""a\"#).is_err());
        assert!(split(r"run\").unwrap_err().contains("trailing backslash"));
    }
}
