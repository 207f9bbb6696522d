//! Job environments (`msctl submit --setup/--requirements/--install-project/--cache`, job
//! files `[environment]`): the rules every side checks the same way. msctl and the scheduler
//! refuse a spec that [`validate`] refuses; the agent maps a cache to its variable with
//! [`cache_var`].

use crate::EnvironmentSpec;
use std::path::{Component, Path};

/// Most setup commands, requirements files and caches one job may name.
pub const MAX_ITEMS: usize = 32;
/// Longest setup command, requirements path or extras list.
pub const MAX_TEXT: usize = 4096;

/// The caches known by name, and the variable each points at its directory.
pub const KNOWN_CACHES: [(&str, &str); 4] = [
    ("huggingface", "HF_HOME"),
    ("pip", "PIP_CACHE_DIR"),
    ("uv", "UV_CACHE_DIR"),
    ("torch", "TORCH_HOME"),
];

/// `(cache name, variable)` of a cache as a job names it: a known name, or `NAME=ENVVAR`.
/// A name is 1..=64 of `[a-z0-9_.-]` (it names a directory), a variable `[A-Z_][A-Z0-9_]*`.
pub fn cache_var(cache: &str) -> Result<(String, String), String> {
    let (name, var) = match cache.split_once('=') {
        Some((n, v)) => (n, v.to_string()),
        None => match KNOWN_CACHES.iter().find(|(n, _)| *n == cache) {
            Some((n, v)) => (*n, v.to_string()),
            None => {
                let known: Vec<&str> = KNOWN_CACHES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown cache '{}': use {} or NAME=ENVVAR",
                    clip(cache),
                    known.join(", ")
                ));
            }
        },
    };
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if !name_ok {
        return Err(format!(
            "cache name '{}' must be 1 to 64 of a-z 0-9 _ . - (not starting with '.')",
            clip(name)
        ));
    }
    let var_ok = var.len() <= 128
        && var
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && var
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !var_ok {
        return Err(format!(
            "cache '{}': the variable must look like HF_HOME (A-Z, 0-9, _)",
            clip(cache)
        ));
    }
    Ok((name.to_string(), var))
}

/// Checks an environment and the job's caches; `env_names` are the names the job's `env`
/// and `secret_env` set (a cache may not set one of them too).
pub fn validate<'a>(
    env: Option<&EnvironmentSpec>,
    caches: &[String],
    env_names: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    if let Some(e) = env {
        items("setup commands", &e.setup)?;
        items("requirements files", &e.requirements)?;
        if e.setup.iter().any(|c| c.trim().is_empty()) {
            return Err("a setup command is empty".into());
        }
        for r in &e.requirements {
            if !is_clean_relative(r) {
                return Err(format!(
                    "requirements file '{}' must be a path relative to the checkout, without '..'",
                    clip(r)
                ));
            }
        }
        if let Some(x) = &e.install_project {
            if x.len() > MAX_TEXT {
                return Err(format!(
                    "install_project extras are longer than {MAX_TEXT} bytes"
                ));
            }
            for extra in x.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !extra
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                {
                    return Err(format!(
                        "extra '{}' of install_project is not a name (use e.g. test,docs)",
                        clip(extra)
                    ));
                }
            }
        }
        if !needs_venv(e) {
            return Err("an environment needs --setup, --requirements or --install-project".into());
        }
    }
    items("caches", caches)?;
    let names: std::collections::BTreeSet<&String> = env_names.into_iter().collect();
    let mut seen = std::collections::BTreeSet::new();
    for c in caches {
        let (name, var) = cache_var(c)?;
        if names.contains(&var) {
            return Err(format!(
                "cache '{}' sets {var}, which the job's env also sets",
                clip(c)
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("cache '{name}' is named twice"));
        }
    }
    Ok(())
}

/// Most affinity keys one environment reports.
pub const MAX_AFFINITY: usize = 16;

/// A job's affinity key: what the scheduler can know of its environment before any checkout
/// (the source's repository or directory, and the environment spec; not the ref, since refs of
/// one project mostly share their dependencies). The agent files it with the environment the
/// job used; an agent holding it is warm for the next such job. `None` without an environment.
/// FNV-1a, 64 bits, hex: stable across builds and versions.
pub fn affinity(spec: &crate::JobSpec) -> Option<String> {
    let env = spec.environment.as_ref().filter(|e| needs_venv(e))?;
    let source = match spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(crate::source::Kind::Git(g)) => format!("git {}", g.url),
        Some(crate::source::Kind::Dir(d)) => format!("dir {d}"),
        None => String::new(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut field = |b: &[u8]| {
        for &x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    field(source.as_bytes());
    for s in &env.setup {
        field(s.as_bytes());
    }
    field(b"--");
    for r in &env.requirements {
        field(r.as_bytes());
    }
    field(env.install_project.as_deref().unwrap_or("\0").as_bytes());
    field(&[u8::from(env.system_site_packages)]);
    Some(format!("{h:016x}"))
}

/// True when the environment asks for anything to be installed or run.
pub fn needs_venv(e: &EnvironmentSpec) -> bool {
    !e.setup.is_empty() || !e.requirements.is_empty() || e.install_project.is_some()
}

fn items(what: &str, list: &[String]) -> Result<(), String> {
    if list.len() > MAX_ITEMS {
        return Err(format!(
            "too many {what}: {}, the limit is {MAX_ITEMS}",
            list.len()
        ));
    }
    if let Some(t) = list.iter().find(|t| t.len() > MAX_TEXT) {
        return Err(format!(
            "one of the {what} ('{}...') is longer than {MAX_TEXT} bytes",
            clip(t)
        ));
    }
    Ok(())
}

fn is_clean_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn clip(t: &str) -> String {
    t.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_map_to_their_variables_and_bad_ones_are_refused() {
        assert_eq!(
            cache_var("huggingface").unwrap(),
            ("huggingface".into(), "HF_HOME".into())
        );
        assert_eq!(
            cache_var("models=MODEL_DIR").unwrap(),
            ("models".into(), "MODEL_DIR".into())
        );
        assert!(cache_var("nope")
            .unwrap_err()
            .contains("unknown cache 'nope'"));
        assert!(cache_var("../x=A").is_err());
        assert!(cache_var("x=lower").is_err());
        assert!(cache_var("x=").is_err());
        let env = vec!["HF_HOME".to_string()];
        let err = validate(None, &["huggingface".into()], &env).unwrap_err();
        assert_eq!(
            err,
            "cache 'huggingface' sets HF_HOME, which the job's env also sets"
        );
        let twice = validate(None, &["pip".into(), "pip".into()], &[]).unwrap_err();
        assert_eq!(twice, "cache 'pip' is named twice");
    }

    #[test]
    fn requirements_stay_in_the_checkout_and_an_empty_environment_is_refused() {
        let mut e = EnvironmentSpec {
            requirements: vec!["../etc/passwd".into()],
            ..Default::default()
        };
        assert!(validate(Some(&e), &[], &[])
            .unwrap_err()
            .contains("relative to the checkout"));
        e.requirements = vec!["/abs.txt".into()];
        assert!(validate(Some(&e), &[], &[]).is_err());
        e.requirements = vec!["req/test.txt".into()];
        assert!(validate(Some(&e), &[], &[]).is_ok());
        let empty = EnvironmentSpec {
            system_site_packages: true,
            ..Default::default()
        };
        assert!(validate(Some(&empty), &[], &[])
            .unwrap_err()
            .contains("needs --setup"));
        let bad_extra = EnvironmentSpec {
            install_project: Some("test;rm -rf".into()),
            ..Default::default()
        };
        assert!(validate(Some(&bad_extra), &[], &[]).is_err());
    }
}
