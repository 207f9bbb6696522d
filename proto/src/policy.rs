//! What an agent's owner lets it run ([`AgentPolicy`]), and the one rule both
//! sides apply: [`admits`]. The agent publishes its policy in its
//! `Capabilities`; the scheduler offers a job only to agents whose policy
//! admits it and refuses at submit a job that no registered agent's policy
//! admits. The agent calls [`admits`] once more before it fetches or runs
//! anything, and then resolves every path [`path_args`] names against its
//! checkout (symlinks followed): the scheduler cannot override either.
//!
//! The checks here are textual: git URL patterns, benchmark command patterns,
//! environment variable names, and pytest arguments that leave the source
//! tree (`--rootdir`, `-c`, `--confcutdir`, `--junitxml`, ... outside it,
//! `--basetemp`, `-p` for plugins not allowed, `--pyargs`, path arguments that
//! are absolute outside a `dir` source, climb with `..` or expand `$VAR`/`~`).

use crate::{source, AgentPolicy, JobSpec};

/// Git URLs fetched by default: any https:// and ssh URL (also `user@host:path`).
pub const DEFAULT_ALLOW_GIT: [&str; 3] = ["https://**", "ssh://**", "*@*:**"];

/// Environment variables refused by default (`GIT_*`: every name with that prefix).
pub const DEFAULT_DENY_ENV: [&str; 11] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "BASH_ENV",
    "ENV",
    "GIT_*",
];

/// The policy of an agent whose owner configured nothing: git over https and
/// ssh, no benchmark commands, [`DEFAULT_DENY_ENV`], no extra pytest plugins.
pub fn defaults() -> AgentPolicy {
    AgentPolicy {
        allow_git: DEFAULT_ALLOW_GIT.map(String::from).to_vec(),
        allow_bench_commands: Vec::new(),
        deny_env: DEFAULT_DENY_ENV.map(String::from).to_vec(),
        allow_env: Vec::new(),
        allow_plugins: Vec::new(),
    }
}

/// `Ok` when an agent with policy `p` may run `spec`; else why not (one line).
pub fn admits(p: &AgentPolicy, spec: &JobSpec) -> Result<(), String> {
    if let Some(source::Kind::Git(g)) = spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        check_git(p, &g.url)?;
    }
    for name in spec.env.keys().chain(spec.secret_env.keys()) {
        check_env(p, name)?;
    }
    if let Some(b) = &spec.benchmark {
        check_command(p, &b.command)?;
    }
    let args = scan(spec);
    for a in &args {
        match a {
            Arg::Refused(why) => return Err(why.clone()),
            Arg::Plugin(name) => check_plugin(p, name)?,
            Arg::Path(path) => check_path_text(path, source_dir(spec))?,
        }
    }
    Ok(())
}

/// Every path `spec` gives the test run (pytest path arguments and path
/// options, benchmark case paths), for the agent to resolve against its
/// checkout. [`admits`] has checked them as text.
pub fn path_args(spec: &JobSpec) -> Vec<PathArg> {
    scan(spec)
        .into_iter()
        .filter_map(|a| match a {
            Arg::Path(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// A path named by a job, and how (`--rootdir`, `path argument`, `case`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathArg {
    pub what: String,
    pub path: String,
}

impl PathArg {
    /// `--rootdir /` / `path argument 'x'`, for refusals.
    pub fn describe(&self) -> String {
        if self.what.starts_with('-') {
            format!("pytest option {} {}", self.what, self.path)
        } else {
            format!("{} '{}'", self.what, self.path)
        }
    }
}

/// True when `text` matches `pattern`: `*` is any run of characters but `/`,
/// `**` any run at all, every other character itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes(), true)
}

/// Like [`glob`], but `*` also crosses `/` (names and commands are not paths).
pub fn glob_any(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes(), false)
}

fn glob_bytes(p: &[u8], t: &[u8], slash_stops: bool) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => {
            let double = p.get(1) == Some(&b'*');
            let rest = if double { &p[2..] } else { &p[1..] };
            let crosses = double || !slash_stops;
            for k in 0..=t.len() {
                if glob_bytes(rest, &t[k..], slash_stops) {
                    return true;
                }
                if k < t.len() && t[k] == b'/' && !crosses {
                    return false;
                }
            }
            false
        }
        Some(&c) => t.first() == Some(&c) && glob_bytes(&p[1..], &t[1..], slash_stops),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn check_git(p: &AgentPolicy, url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "git URL '{url}' contains whitespace or control characters"
        ));
    }
    // `transport::address` runs a remote helper.
    if let Some((helper, _)) = url.split_once("::") {
        if !helper.is_empty()
            && helper
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(format!(
                "git URL '{url}' names a remote helper ({helper}::), which the agent never runs"
            ));
        }
    }
    if url.split(['/', ':']).any(|seg| seg == "..") {
        return Err(format!("git URL '{url}' has a '..' segment"));
    }
    if p.allow_git.iter().any(|pat| glob(pat, url)) {
        return Ok(());
    }
    Err(format!(
        "the agent's policy does not fetch git URL '{url}' (allow_git: {}); \
         file:// and local paths need a pattern that names them",
        list(&p.allow_git)
    ))
}

fn check_command(p: &AgentPolicy, command: &[String]) -> Result<(), String> {
    let whole = command.join(" ");
    if p.allow_bench_commands.is_empty() {
        return Err(format!(
            "the agent's policy runs no benchmark commands (allow_bench_commands = false), \
             refused: '{whole}'"
        ));
    }
    let first = command.first().map(String::as_str).unwrap_or("");
    if p.allow_bench_commands
        .iter()
        .any(|pat| glob_any(pat, first) || glob_any(pat, &whole))
    {
        return Ok(());
    }
    Err(format!(
        "the agent's policy does not run benchmark command '{whole}' (allow_bench_commands: {})",
        list(&p.allow_bench_commands)
    ))
}

/// True when `name` is one of `patterns` (a name, or `PREFIX*`).
fn names(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|pat| glob_any(pat, name))
}

fn check_env(p: &AgentPolicy, name: &str) -> Result<(), String> {
    if names(&p.deny_env, name) && !names(&p.allow_env, name) {
        return Err(format!(
            "the agent's policy refuses environment variable {name} (deny_env; \
             the agent's allow_env lets it through)"
        ));
    }
    Ok(())
}

fn check_plugin(p: &AgentPolicy, name: &str) -> Result<(), String> {
    if name.starts_with("no:") || p.allow_plugins.iter().any(|a| a == name) {
        return Ok(());
    }
    Err(format!(
        "the agent's policy does not load pytest plugin '-p {name}' (allow_plugins: {})",
        list(&p.allow_plugins)
    ))
}

fn source_dir(spec: &JobSpec) -> Option<&str> {
    match spec.source.as_ref()?.kind.as_ref()? {
        source::Kind::Dir(d) => Some(d),
        source::Kind::Git(_) => None,
    }
}

/// A path must stay in the checkout: relative without `..`, or absolute under
/// a `dir` source. Options whose value pytest expands refuse `$` and `~`.
fn check_path_text(a: &PathArg, dir: Option<&str>) -> Result<(), String> {
    let path = a.path.as_str();
    let leaves = || {
        format!(
            "{} leaves the source tree (paths must stay inside the checkout)",
            a.describe()
        )
    };
    if path.split('/').any(|c| c == "..") {
        return Err(format!("{}: '..' is not allowed", leaves()));
    }
    if a.what.starts_with('-') && (path.contains('$') || path.starts_with('~')) {
        return Err(format!(
            "{}: pytest would expand '$' or '~' in it",
            leaves()
        ));
    }
    if path.starts_with('/') && !dir.is_some_and(|d| crate::roots::is_under(path, d)) {
        return Err(leaves());
    }
    Ok(())
}

/// One argument of a job, as the policy sees it.
enum Arg {
    Path(PathArg),
    Plugin(String),
    Refused(String),
}

/// pytest options whose value is a path pytest reads or writes.
const PATH_OPTIONS: [&str; 9] = [
    "--rootdir",
    "--config-file",
    "--confcutdir",
    "--junitxml",
    "--junit-xml",
    "--resultlog",
    "--result-log",
    "--log-file",
    "--debug",
];

/// pytest options whose value is not a path (an expression, a name, a number).
const VALUE_OPTIONS: [&str; 22] = [
    "--deselect",
    "--ignore",
    "--ignore-glob",
    "--maxfail",
    "--durations",
    "--durations-min",
    "--tb",
    "--color",
    "--code-highlight",
    "--capture",
    "--show-capture",
    "--log-level",
    "--log-cli-level",
    "--log-file-level",
    "--log-format",
    "--log-date-format",
    "--log-cli-format",
    "--log-cli-date-format",
    "--import-mode",
    "--junit-prefix",
    "--assert",
    "--timeout",
];

/// Short options that take a value: -k EXPR, -m EXPR, -p NAME, -c FILE,
/// -o INI, -r CHARS, -W WARNING, -n NUM (xdist).
const SHORT_WITH_VALUE: &str = "kmpcorWn";

/// `-o` keys that would change what pytest loads, refused.
const REFUSED_INI: [&str; 3] = ["addopts", "pythonpath", "required_plugins"];
/// `-o` keys whose value is a path.
const PATH_INI: [&str; 3] = ["cache_dir", "log_file", "testpaths"];

fn scan(spec: &JobSpec) -> Vec<Arg> {
    let mut out = Vec::new();
    if let Some(b) = &spec.benchmark {
        for c in &b.cases {
            out.push(path("case", c));
        }
        return out;
    }
    let mut it = spec.args.iter().map(String::as_str);
    let mut positional_only = false;
    while let Some(arg) = it.next() {
        if positional_only || arg == "-" || !arg.starts_with('-') {
            // A path or a node id `path::name[params]`.
            let p = arg.split("::").next().unwrap_or(arg);
            out.push(path("path argument", p));
            continue;
        }
        if arg == "--" {
            positional_only = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v)),
                None => (arg.to_string(), None),
            };
            let name = name.as_str();
            if name == "--basetemp" {
                out.push(Arg::Refused(
                    "pytest option --basetemp is refused: pytest deletes that directory, \
                     and the agent chooses where temporary files go"
                        .into(),
                ));
                if inline.is_none() {
                    it.next();
                }
            } else if name == "--pyargs" {
                out.push(Arg::Refused(
                    "pytest option --pyargs is refused: it collects tests from outside the checkout"
                        .into(),
                ));
            } else if name == "--override-ini" {
                let v = inline.or_else(|| it.next()).unwrap_or("");
                out.extend(ini(v));
            } else if name == "--debug" {
                // An optional value: only `--debug=FILE` names one for sure;
                // a following word is checked as a path argument anyway.
                if let Some(v) = inline {
                    out.push(path(name, v));
                }
            } else if PATH_OPTIONS.contains(&name) {
                let v = inline.or_else(|| it.next()).unwrap_or("");
                out.push(path(name, v));
            } else if VALUE_OPTIONS.contains(&name) {
                if inline.is_none() {
                    it.next();
                }
            } else if let Some(v) = inline {
                // An option we do not know (a plugin's): its value is held to
                // the rule for paths, which harmless values pass.
                out.push(path(name, v));
            }
            continue;
        }
        // Short options, possibly clustered (`-xvs`, `-pname`, `-k expr`).
        let cluster = &arg[1..];
        for (i, c) in cluster.char_indices() {
            if !SHORT_WITH_VALUE.contains(c) {
                continue;
            }
            let rest = &cluster[i + c.len_utf8()..];
            let v = if rest.is_empty() {
                it.next().unwrap_or("")
            } else {
                rest
            };
            match c {
                'p' => out.push(Arg::Plugin(v.trim().to_string())),
                'c' => out.push(path("-c", v)),
                'o' => out.extend(ini(v)),
                _ => {}
            }
            break;
        }
    }
    out
}

fn path(what: &str, p: &str) -> Arg {
    Arg::Path(PathArg {
        what: what.to_string(),
        path: p.to_string(),
    })
}

/// `-o KEY=VALUE`: refused, a path, or nothing to check.
fn ini(kv: &str) -> Option<Arg> {
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    let key = key.trim();
    if REFUSED_INI.contains(&key) {
        return Some(Arg::Refused(format!(
            "pytest option -o {key}=... is refused: it changes what pytest loads"
        )));
    }
    PATH_INI
        .contains(&key)
        .then(|| path(&format!("-o {key}"), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BenchmarkSpec, GitSource, Source};

    fn dir_job(args: &[&str]) -> JobSpec {
        JobSpec {
            kind: "pytest".into(),
            source: Some(Source {
                kind: Some(source::Kind::Dir("/srv/suite".into())),
            }),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn git_job(url: &str) -> JobSpec {
        JobSpec {
            source: Some(Source {
                kind: Some(source::Kind::Git(GitSource {
                    url: url.into(),
                    r#ref: "main".into(),
                })),
            }),
            ..dir_job(&[])
        }
    }

    fn bench_job(command: &[&str]) -> JobSpec {
        JobSpec {
            kind: "benchmark".into(),
            benchmark: Some(BenchmarkSpec {
                command: command.iter().map(|s| s.to_string()).collect(),
                cases: vec!["cases".into()],
                ..Default::default()
            }),
            ..dir_job(&[])
        }
    }

    fn refused(p: &AgentPolicy, spec: &JobSpec, want: &str) {
        let why = admits(p, spec).expect_err(&format!("{spec:?} must be refused"));
        assert!(why.contains(want), "'{why}' does not say '{want}'");
    }

    #[test]
    fn globs_stop_at_slashes_unless_doubled() {
        assert!(glob(
            "https://github.com/org/*",
            "https://github.com/org/repo.git"
        ));
        assert!(!glob(
            "https://github.com/org/*",
            "https://github.com/org/a/b"
        ));
        assert!(!glob(
            "https://github.com/org/*",
            "https://github.com/orgx/repo"
        ));
        assert!(!glob(
            "https://*.example.com/*",
            "https://evil.com/x.example.com/r"
        ));
        assert!(glob("https://**", "https://host/a/b/c"));
        assert!(glob("*@*:**", "git@github.com:org/repo.git"));
        assert!(!glob("*@*:**", "/srv/a@b:c"));
        assert!(!glob("*@*:**", "file:///x@y:z"));
        assert!(glob_any("GIT_*", "GIT_SSH_COMMAND"));
        assert!(glob_any("python *", "python scripts/run.py {case}"));
        assert!(!glob_any("GIT_*", "XGIT_A"));
    }

    #[test]
    fn default_git_is_https_and_ssh_only() {
        let p = defaults();
        for ok in [
            "https://github.com/org/repo.git",
            "ssh://git@host/org/repo",
            "git@github.com:org/repo.git",
        ] {
            assert_eq!(admits(&p, &git_job(ok)), Ok(()), "{ok}");
        }
        refused(
            &p,
            &git_job("file:///srv/repo"),
            "does not fetch git URL 'file:///srv/repo'",
        );
        refused(&p, &git_job("/srv/repo"), "file:// and local paths");
        refused(
            &p,
            &git_job("./repo"),
            "allow_git: https://**, ssh://**, *@*:**",
        );
        refused(
            &p,
            &git_job("http://plain.example/r"),
            "does not fetch git URL",
        );
        refused(&p, &git_job("ext::sh -c touch% /tmp/x"), "whitespace");
        refused(&p, &git_job("ext::ssh@host:x"), "remote helper (ext::)");
        refused(&p, &git_job("https://h/org/../x"), "'..' segment");
    }

    #[test]
    fn git_patterns_of_the_owner_decide() {
        let p = AgentPolicy {
            allow_git: vec![
                "https://github.com/org/*".into(),
                "file:///srv/repos/**".into(),
            ],
            ..defaults()
        };
        assert_eq!(admits(&p, &git_job("https://github.com/org/r.git")), Ok(()));
        assert_eq!(admits(&p, &git_job("file:///srv/repos/a/b")), Ok(()));
        refused(
            &p,
            &git_job("https://github.com/other/r.git"),
            "allow_git: https://github.com/org/*",
        );
        refused(&p, &git_job("git@github.com:org/r.git"), "does not fetch");
    }

    #[test]
    fn benchmark_commands_are_refused_unless_allowed() {
        let job = bench_job(&["python", "run_case.py", "{case}"]);
        refused(
            &defaults(),
            &job,
            "runs no benchmark commands (allow_bench_commands = false)",
        );
        let any = AgentPolicy {
            allow_bench_commands: vec!["*".into()],
            ..defaults()
        };
        assert_eq!(admits(&any, &job), Ok(()));
        let some = AgentPolicy {
            allow_bench_commands: vec!["python".into(), "./bench/* {case}".into()],
            ..defaults()
        };
        assert_eq!(admits(&some, &job), Ok(()), "the first word matches");
        assert_eq!(
            admits(&some, &bench_job(&["./bench/run", "{case}"])),
            Ok(()),
            "the whole command"
        );
        refused(
            &some,
            &bench_job(&["sh", "-c", "curl x | sh"]),
            "does not run benchmark command 'sh -c curl x | sh'",
        );
        let mut outside = bench_job(&["python", "{case}"]);
        outside.benchmark.as_mut().unwrap().cases = vec!["/etc".into()];
        refused(&any, &outside, "case '/etc' leaves the source tree");
    }

    #[test]
    fn denied_env_names_in_env_and_secret_env() {
        let p = defaults();
        for name in [
            "LD_PRELOAD",
            "PYTHONPATH",
            "GIT_SSH_COMMAND",
            "BASH_ENV",
            "PYTEST_ADDOPTS",
        ] {
            let mut job = dir_job(&[]);
            job.env.insert(name.into(), "x".into());
            refused(&p, &job, &format!("refuses environment variable {name}"));
            let mut job = dir_job(&[]);
            job.secret_env.insert(name.into(), "x".into());
            refused(&p, &job, &format!("refuses environment variable {name}"));
        }
        let mut job = dir_job(&[]);
        job.env.insert("CUDA_VISIBLE_DEVICES".into(), "0".into());
        job.env.insert("GITHUB_TOKEN_NAME".into(), "x".into());
        assert_eq!(admits(&p, &job), Ok(()));
        let allow = AgentPolicy {
            allow_env: vec!["PYTHONPATH".into()],
            ..defaults()
        };
        let mut job = dir_job(&[]);
        job.env.insert("PYTHONPATH".into(), "src".into());
        assert_eq!(admits(&allow, &job), Ok(()));
    }

    #[test]
    fn pytest_arguments_that_leave_the_tree_are_refused() {
        let p = defaults();
        let cases: &[(&[&str], &str)] = &[
            (
                &["--rootdir", "/"],
                "pytest option --rootdir / leaves the source tree",
            ),
            (&["--rootdir=/tmp"], "pytest option --rootdir /tmp leaves"),
            (&["-c", "/etc/x.ini"], "pytest option -c /etc/x.ini leaves"),
            (&["-c/etc/x.ini"], "pytest option -c /etc/x.ini leaves"),
            (
                &["--config-file=/etc/x.ini"],
                "--config-file /etc/x.ini leaves",
            ),
            (&["--confcutdir", "/"], "--confcutdir / leaves"),
            (&["--basetemp", "tmp"], "--basetemp is refused"),
            (&["--basetemp=/tmp/x"], "--basetemp is refused"),
            (
                &["-p", "evilplugin"],
                "does not load pytest plugin '-p evilplugin' (allow_plugins: none)",
            ),
            (&["-pevilplugin"], "'-p evilplugin'"),
            (&["-xp", "evilplugin"], "'-p evilplugin'"),
            (&["--junitxml=/tmp/j.xml"], "--junitxml /tmp/j.xml leaves"),
            (&["--junit-xml", "../j.xml"], "'..' is not allowed"),
            (&["--resultlog", "/tmp/r"], "--resultlog /tmp/r leaves"),
            (&["--rootdir", "$HOME"], "expand '$' or '~'"),
            (&["--rootdir", "~/x"], "expand '$' or '~'"),
            (&["/etc"], "path argument '/etc' leaves"),
            (
                &["/srv/suitex/tests"],
                "path argument '/srv/suitex/tests' leaves",
            ),
            (&["../other/tests"], "'..' is not allowed"),
            (&["tests/../../x::test_a"], "'..' is not allowed"),
            (&["--", "/etc"], "path argument '/etc'"),
            (&["--pyargs", "os"], "--pyargs is refused"),
            (&["-o", "addopts=-p evil"], "-o addopts=... is refused"),
            (
                &["--override-ini=pythonpath=/x"],
                "-o pythonpath=... is refused",
            ),
            (
                &["-o", "cache_dir=/tmp/c"],
                "pytest option -o cache_dir /tmp/c leaves",
            ),
            (
                &["--some-plugin-opt=/tmp/x"],
                "pytest option --some-plugin-opt /tmp/x leaves",
            ),
        ];
        for (args, want) in cases {
            refused(&p, &dir_job(args), want);
        }
    }

    #[test]
    fn pytest_arguments_inside_the_tree_are_fine() {
        let p = AgentPolicy {
            allow_plugins: vec!["xdist".into()],
            ..defaults()
        };
        let ok: &[&[&str]] = &[
            &["tests/smoke", "-m", "not slow", "-k", "a or b"],
            &[
                "-p",
                "no:randomly",
                "-pno:cacheprovider",
                "-p",
                "xdist",
                "-n",
                "4",
            ],
            &["/srv/suite/tests/test_a.py::test_x[/etc]"],
            &[
                "--rootdir",
                ".",
                "-c",
                "ci/pytest.ini",
                "--junitxml=out/j.xml",
            ],
            &[
                "-xvs",
                "--tb",
                "short",
                "--maxfail=2",
                "-W",
                "error::/x",
                "-ra",
            ],
            &[
                "--deselect",
                "/abs/elsewhere::t",
                "-o",
                "log_cli=true",
                "--debug",
            ],
        ];
        for args in ok {
            assert_eq!(admits(&p, &dir_job(args)), Ok(()), "{args:?}");
        }
        // In a git checkout an absolute path is never inside it.
        let mut g = git_job("https://github.com/o/r");
        g.args = vec!["/srv/suite/tests".into()];
        refused(&p, &g, "path argument '/srv/suite/tests' leaves");
    }

    #[test]
    fn path_args_lists_what_the_agent_resolves() {
        let job = dir_job(&[
            "tests",
            "--rootdir=sub",
            "-k",
            "x",
            "-c",
            "a.ini",
            "t.py::t",
        ]);
        let paths: Vec<(String, String)> = path_args(&job)
            .into_iter()
            .map(|a| (a.what, a.path))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("path argument".to_string(), "tests".to_string()),
                ("--rootdir".to_string(), "sub".to_string()),
                ("-c".to_string(), "a.ini".to_string()),
                ("path argument".to_string(), "t.py".to_string()),
            ]
        );
        assert_eq!(
            path_args(&bench_job(&["python"])),
            vec![PathArg {
                what: "case".into(),
                path: "cases".into()
            }]
        );
    }
}
