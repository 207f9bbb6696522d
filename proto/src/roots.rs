//! Which directories a job may run from. One rule, called by both sides: the
//! scheduler checks a job's `dir` against the roots an agent reported (at
//! submit and when matching), and the agent checks the same `dir` once more
//! after resolving symlinks (its roots are resolved when its config loads).
//! Both therefore agree on every path that contains no symlink, and the
//! agent's check is the one that cannot be fooled by one.

use std::path::{Component, Path};

/// True for an absolute path with no `..` component: a path whose meaning
/// does not depend on a working directory or on climbing out of a root.
pub fn is_clean_absolute(path: impl AsRef<Path>) -> bool {
    let p = path.as_ref();
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

/// True when `path` is `root` or lies inside it, compared whole component by
/// whole component (`/srv/workshop` is not under `/srv/work`; `.` and repeated
/// or trailing slashes do not matter). Both must be clean absolute paths
/// ([`is_clean_absolute`]); anything else is never under anything.
pub fn is_under(path: impl AsRef<Path>, root: impl AsRef<Path>) -> bool {
    let (path, root) = (path.as_ref(), root.as_ref());
    is_clean_absolute(path) && is_clean_absolute(root) && path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_components_decide() {
        assert!(is_under("/srv/work", "/srv/work"));
        assert!(is_under("/srv/work/a/b", "/srv/work/"));
        assert!(is_under("/srv/work/./a", "/srv//work"));
        assert!(is_under("/anything", "/"));
        assert!(!is_under("/srv/workshop", "/srv/work"));
        assert!(!is_under("/srv", "/srv/work"));
    }

    #[test]
    fn relative_paths_and_dot_dot_are_never_under_a_root() {
        assert!(!is_under("/srv/work", "relative"));
        assert!(!is_under("srv/work", "/srv"));
        assert!(!is_under("/srv/work/../../etc", "/srv/work"));
        assert!(!is_under("/srv/work/x", "/srv/work/.."));
        assert!(is_clean_absolute("/a/./b"));
        assert!(!is_clean_absolute("/a/../b"));
        assert!(!is_clean_absolute("a/b"));
    }
}
