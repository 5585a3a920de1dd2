//! Least privilege once the VM is built: /dev/kvm and the VFIO descriptors
//! are open and the DMA mapping has started, so the run needs no capability
//! any more. The main thread (and every vCPU thread it starts afterwards)
//! drops the bounding set, switches to `--user UID[:GID]` when vflaunch
//! started as root, clears every capability set and sets `no_new_privs`.
//!
//! The DMA pinning runs on its own thread beside that switch. VFIO type1 and
//! iommufd decide at each map call whether its pins are charged to
//! RLIMIT_MEMLOCK (they are when the calling thread lacks CAP_IPC_LOCK, as
//! it does once the user switch reaches it), so with `--user` vflaunch,
//! still root, first raises its memlock limit to cover guest RAM
//! ([`cover_memlock`]).

use caps::CapSet;

use super::checks::memlock_rlimit;

/// The user to run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    /// User ID.
    pub uid: u32,
    /// Group ID (the UID when not given).
    pub gid: u32,
}

impl std::str::FromStr for User {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: use UID or UID:GID (numbers), e.g. 107:107");
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        Ok(User {
            uid: u.parse().map_err(|_| bad())?,
            gid: g.parse().map_err(|_| bad())?,
        })
    }
}

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Switching user needs root.
    #[error("--user needs vflaunch to start as root (it runs as uid {0}): drop --user, or start it as root")]
    NotRoot(u32),
    /// A set*id or prctl call failed.
    #[error("cannot {0}")]
    Os(&'static str, #[source] std::io::Error),
    /// Capabilities could not be changed.
    #[error("cannot drop capabilities")]
    Caps(#[source] caps::errors::CapsError),
}

fn check(what: &'static str, r: libc::c_int) -> Result<(), PrivilegeError> {
    if r == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Os(what, std::io::Error::last_os_error()))
    }
}

/// Started as root with `--user`: raises RLIMIT_MEMLOCK (soft and hard) to at
/// least `bytes`, so that guest RAM's DMA pins fit it whenever the switch to
/// the user happens (see the module docs). Without CAP_SYS_RESOURCE the hard
/// limit stays: the soft one goes up to it, and a warning says what to raise.
/// Anything else: nothing to do.
pub fn cover_memlock(user: Option<User>, bytes: u64) -> Result<(), PrivilegeError> {
    // SAFETY: getuid has no arguments and cannot fail.
    if user.is_none() || unsafe { libc::getuid() } != 0 {
        return Ok(());
    }
    let lim = memlock_rlimit().map_err(|e| PrivilegeError::Os("read RLIMIT_MEMLOCK", e))?;
    if lim.rlim_cur >= bytes {
        return Ok(());
    }
    let set = |l: libc::rlimit| {
        // SAFETY: setrlimit reads one rlimit from `l`, which lives on this stack.
        check("raise RLIMIT_MEMLOCK", unsafe {
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &l)
        })
    };
    let want = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: lim.rlim_max.max(bytes),
    };
    if set(want).is_ok() {
        log::debug!(
            "RLIMIT_MEMLOCK raised to {} MiB for the DMA pins",
            bytes >> 20
        );
        return Ok(());
    }
    set(libc::rlimit {
        rlim_cur: lim.rlim_max,
        ..lim
    })?;
    log::warn!(
        "RLIMIT_MEMLOCK is {} MiB and cannot be raised without CAP_SYS_RESOURCE: with --user, guest RAM pinned after the switch counts against it; if the DMA mapping fails, raise it to {} MiB (ulimit -l)",
        lim.rlim_max >> 20,
        bytes.div_ceil(1 << 20)
    );
    Ok(())
}

/// Drops every privilege for the rest of the run (see the module docs).
pub fn drop_all(user: Option<User>) -> Result<(), PrivilegeError> {
    let caps = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Caps)?;
    if caps.contains(&caps::Capability::CAP_SETPCAP) {
        for c in caps::all() {
            caps::drop(None, CapSet::Bounding, c).map_err(PrivilegeError::Caps)?;
        }
    }
    if let Some(u) = user {
        // SAFETY: getuid has no arguments and cannot fail.
        let me = unsafe { libc::getuid() };
        if me != 0 {
            return Err(PrivilegeError::NotRoot(me));
        }
        // SAFETY: setgroups with a count of 0 reads no memory.
        check("drop the supplementary groups", unsafe {
            libc::setgroups(0, std::ptr::null())
        })?;
        // SAFETY: plain set*id calls on numbers; glibc applies them to every thread.
        check("switch group", unsafe { libc::setgid(u.gid) })?;
        // SAFETY: as above.
        check("switch user", unsafe { libc::setuid(u.uid) })?;
        log::info!("running as uid {} gid {}", u.uid, u.gid);
    }
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        caps::clear(None, set).map_err(PrivilegeError::Caps)?;
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments.
    check("set no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    log::info!("capabilities dropped, no_new_privs set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memlock() -> libc::rlimit {
        memlock_rlimit().unwrap()
    }

    #[test]
    fn with_a_user_root_raises_its_memlock_limit_to_cover_guest_ram() {
        let before = memlock();
        // SAFETY: getuid has no arguments and cannot fail.
        if unsafe { libc::getuid() } != 0
            || before.rlim_max == libc::RLIM_INFINITY
            || before.rlim_max < 2 << 20
        {
            println!("SKIPPED: raising RLIMIT_MEMLOCK needs root and a finite limit");
            return;
        }
        // Soft below hard (lowering needs no privilege), guest RAM above both.
        let low = libc::rlimit {
            rlim_cur: before.rlim_max - (1 << 20),
            ..before
        };
        // SAFETY: setrlimit reads one rlimit from `low`, which lives on this stack.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &low) }, 0);
        let want = before.rlim_max + (1 << 20);
        cover_memlock(None, want).unwrap();
        assert_eq!(memlock().rlim_cur, low.rlim_cur, "no --user: untouched");
        let user = Some(User { uid: 107, gid: 107 });
        cover_memlock(user, want).unwrap();
        let after = memlock();
        let can = caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE)
            .unwrap_or(false);
        if can {
            assert_eq!(after.rlim_cur, want, "raised to guest RAM");
            assert!(after.rlim_max >= want);
        } else {
            assert_eq!(
                after.rlim_cur, before.rlim_max,
                "best effort: up to the hard limit"
            );
            assert_eq!(after.rlim_max, before.rlim_max);
        }
        cover_memlock(user, after.rlim_cur - 1).unwrap();
        assert_eq!(memlock().rlim_cur, after.rlim_cur, "never lowered");
    }

    #[test]
    fn users_parse() {
        assert_eq!("107".parse(), Ok(User { uid: 107, gid: 107 }));
        assert_eq!("107:36".parse(), Ok(User { uid: 107, gid: 36 }));
        assert!("qemu".parse::<User>().is_err());
        assert!("1:x".parse::<User>().is_err());
    }

    #[test]
    fn a_dropped_thread_has_no_capability_and_no_new_privs() {
        // On a thread of its own: capabilities and no_new_privs are per thread.
        let (eff, nnp) = std::thread::spawn(|| {
            drop_all(None).unwrap();
            // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer.
            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            (caps::read(None, CapSet::Effective).unwrap(), nnp)
        })
        .join()
        .unwrap();
        assert!(eff.is_empty(), "{eff:?}");
        assert_eq!(nnp, 1);
    }
}
