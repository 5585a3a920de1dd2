//! Least privilege once the VM is built: /dev/kvm, the VFIO descriptors and
//! the DMA pins are in hand, so the run needs no capability any more. The
//! main thread (and every vCPU thread it starts afterwards) drops the
//! bounding set, switches to `--user UID[:GID]` when vflaunch started as
//! root, clears every capability set and sets `no_new_privs`.

use caps::CapSet;

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
