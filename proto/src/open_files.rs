//! The open-files limit (`RLIMIT_NOFILE`): every agent session is one TCP
//! connection, so a scheduler serving 100,000 agents needs as many file
//! descriptors. Many hosts start services with a soft limit of 1024 and a
//! much higher hard limit; msched (and the load generator) raise the soft
//! limit to the hard one at start, as the Go runtime does.

/// The soft and hard limit in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

fn current() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// The limit now.
pub fn limit() -> std::io::Result<Limit> {
    let lim = current()?;
    Ok(Limit {
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
    })
}

/// Raises the soft limit to the hard one (an unprivileged process may) and
/// returns the limit then in force.
pub fn raise_to_hard() -> std::io::Result<Limit> {
    let mut lim = current()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one rlimit from the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let before = limit().unwrap();
        let after = raise_to_hard().unwrap();
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.soft, after.hard);
    }
}
