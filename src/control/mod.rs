//! The controller: the main thread's loop that owns the VM (a [`Vmm`]) and
//! answers everything that can change it — API calls, SIGTERM/SIGINT, the
//! guest stopping, the shutdown deadline — one at a time, in one place.
//!
//! The pod lifecycle: SIGTERM presses the guest's ACPI power button; the
//! guest shuts down in order and powers off (exit 0). A guest that is still
//! up after `--shutdown-timeout`, a second SIGTERM, or SIGINT stops it hard
//! (exit 128 + signal). When the guest stops by itself, vflaunch tears down
//! and exits with the guest's exit code, with or without an API.

mod actions;
mod cold_plug;
mod info;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiError, ApiServer, Call, Reply};
use crate::config::VmConfig;
use crate::error::{error_chain, exit_code};
use crate::events::{EventError, EventMonitor, EventTarget};
use crate::exit::{self, ExitReason, SignalHandlers};
use crate::host::checks::HostPaths;
use crate::host::preflight::{self, Checked, Request};
use crate::vmm::{VmState, Vmm, VmmError};

/// Errors starting the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The API socket.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The event monitor.
    #[error(transparent)]
    Events(#[from] EventError),
    /// Eventfd or signal plumbing.
    #[error("{0}")]
    Os(&'static str, #[source] std::io::Error),
    /// Building or booting the VM.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// Dropping privileges after the build.
    #[error(transparent)]
    Privileges(#[from] crate::host::privileges::PrivilegeError),
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Serve the API here.
    pub api_socket: Option<PathBuf>,
    /// Write events here.
    pub event_monitor: Option<EventTarget>,
    /// How long the guest gets to power off after SIGTERM.
    pub shutdown_timeout: Duration,
    /// The user to switch to once the VM is built.
    pub user: Option<crate::host::privileges::User>,
}

/// The VM the controller holds, with what `vm.info` reports of it.
struct Spec {
    config: VmConfig,
    /// The caller's id per device, in `config.devices` order.
    ids: Vec<String>,
    /// The configuration as asked for, echoed back.
    echo: Value,
}

/// The pre-flight request for `cfg`.
pub fn request_for(cfg: &VmConfig) -> Request<'_> {
    Request {
        devices: &cfg.devices,
        memory: cfg.memory,
        allow_unsafe_interrupts: cfg.allow_unsafe_interrupts,
        backend: cfg.vfio_backend,
        preopened: &cfg.preopened,
        hugepages: cfg.hugepages,
    }
}

/// What the loop does after an event.
enum Next {
    Continue,
    Exit(i32),
}

/// The main thread's owner of the VM and its controls.
pub struct Controller {
    opts: Options,
    host: HostPaths,
    wake: Arc<EventFd>,
    calls: mpsc::Receiver<Call>,
    // Held for their lifetime: the socket closes and the handlers stop
    // waking us when the controller goes.
    _api: Option<ApiServer>,
    _signals: SignalHandlers,
    events: EventMonitor,
    spec: Option<Spec>,
    vm: Option<Vmm>,
    /// Shut down (vm.shutdown, or never booted again) but not deleted.
    shut_down: bool,
    deadline: Option<Instant>,
    /// Privileges dropped (after the first build).
    dropped: bool,
}

impl Controller {
    /// Installs the signal handlers first (an early SIGTERM still gets the
    /// orderly path), then opens the event monitor and the API socket.
    pub fn new(opts: Options, host: HostPaths) -> Result<Self, ControlError> {
        let wake = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| ControlError::Os("cannot create an eventfd", e))?,
        );
        let signals = SignalHandlers::install(&wake)
            .map_err(|e| ControlError::Os("cannot install signal handlers", e))?;
        let mut events = EventMonitor::open(opts.event_monitor.as_ref())?;
        events.emit(
            "vmm",
            "starting",
            Some(json!({"version": env!("CARGO_PKG_VERSION"), "pid": std::process::id()})),
        );
        let (tx, calls) = mpsc::channel();
        let api = match &opts.api_socket {
            Some(p) => Some(ApiServer::start(p, tx, wake.clone())?),
            None => None,
        };
        Ok(Controller {
            opts,
            host,
            wake,
            calls,
            _api: api,
            _signals: signals,
            events,
            spec: None,
            vm: None,
            shut_down: false,
            deadline: None,
            dropped: false,
        })
    }

    /// `vflaunch run`: builds and boots `config` (its devices checked
    /// already), then serves until the guest stops; returns the exit code.
    pub fn run_vm(mut self, config: VmConfig, checked: &Checked) -> Result<i32, ControlError> {
        let echo = info::echo_config(&config);
        let ids = (0..config.devices.len())
            .map(|i| format!("vfio{i}"))
            .collect();
        self.spec = Some(Spec { config, ids, echo });
        self.events.emit("vm", "created", None);
        self.cover_memlock()?;
        self.build(checked)?;
        // A signal while the VM was built: tear down in order, never boot.
        if let Some(Next::Exit(code)) = exit::take_signal().map(|s| self.on_signal(s)) {
            return Ok(self.finish(code));
        }
        self.drop_privileges()?;
        self.start()?;
        Ok(self.serve())
    }

    /// `vflaunch --api-socket`: waits for `vm.create`, then serves; returns
    /// the exit code.
    pub fn run_api(self) -> i32 {
        self.serve()
    }

    fn serve(mut self) -> i32 {
        loop {
            if let Next::Exit(code) = self.step() {
                return self.finish(code);
            }
        }
    }

    /// Waits for one round of events and handles them.
    fn step(&mut self) -> Next {
        let mut fds = vec![libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(vm) = &self.vm {
            fds.push(libc::pollfd {
                fd: vm.exit_signal().eventfd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = self.deadline.map_or(-1, |d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as i32
        });
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        let _ = self.wake.read();
        if let Some(sig) = exit::take_signal() {
            if let Next::Exit(c) = self.on_signal(sig) {
                return Next::Exit(c);
            }
        }
        while let Ok((action, reply)) = self.calls.try_recv() {
            let (answer, next) = self.handle(action);
            let _ = reply.send(answer);
            if let Next::Exit(c) = next {
                return Next::Exit(c);
            }
        }
        if let Some(reason) = self.vm.as_ref().and_then(|v| v.exit_signal().reason()) {
            let _ = self.vm.as_ref().map(|v| v.exit_signal().eventfd().read());
            return self.on_guest_stop(reason);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            let why = format!(
                "the guest did not power off within {:?}",
                self.opts.shutdown_timeout
            );
            return self.hard_stop(libc::SIGTERM, &why);
        }
        Next::Continue
    }

    /// Stops the guest without its cooperation (exit 128 + `sig`).
    fn hard_stop(&mut self, sig: i32, why: &str) -> Next {
        let code = exit_code::SIGNAL_BASE + sig;
        eprintln!("vflaunch: {why}: stopped by signal {sig} (exit code {code})");
        self.events
            .emit("vm", "stopped", Some(json!({"signal": sig, "why": why})));
        Next::Exit(code)
    }

    fn running(&self) -> bool {
        self.vm
            .as_ref()
            .is_some_and(|v| v.state() == VmState::Running)
    }

    fn on_signal(&mut self, sig: i32) -> Next {
        if sig != libc::SIGTERM {
            return self.hard_stop(sig, "interrupted");
        }
        if self.deadline.is_some() {
            return self.hard_stop(sig, "a second SIGTERM");
        }
        if !self.running() {
            return self.hard_stop(sig, "SIGTERM with no running guest");
        }
        match self.vm.as_ref().map(Vmm::power_button) {
            Some(Ok(())) => {
                log::info!(
                    "SIGTERM: pressed the guest's power button; it has {:?} to power off",
                    self.opts.shutdown_timeout
                );
                self.events
                    .emit("vm", "power-button", Some(json!({"cause": "SIGTERM"})));
                self.deadline = Some(Instant::now() + self.opts.shutdown_timeout);
                Next::Continue
            }
            _ => self.hard_stop(sig, "the power button could not be pressed"),
        }
    }

    fn on_guest_stop(&mut self, reason: ExitReason) -> Next {
        let event = match &reason {
            ExitReason::PowerOff | ExitReason::I8042Reset => "shutdown",
            ExitReason::GuestReset => "reboot",
            ExitReason::TripleFault => "triple-fault",
            ExitReason::VcpuError(_) => "vcpu-error",
            ExitReason::Failed(_) => "failed",
            ExitReason::Signal(_) | ExitReason::Stopped => "stopped",
        };
        self.events
            .emit("vm", event, Some(json!({"reason": reason.to_string()})));
        let code = reason.exit_code();
        if code != 0 {
            eprintln!("vflaunch: {reason} (exit code {code})");
        }
        Next::Exit(code)
    }

    /// Tears the VM down and says goodbye; returns `code`.
    fn finish(&mut self, code: i32) -> i32 {
        self.stop_vm();
        self.events
            .emit("vmm", "exit", Some(json!({"exit_code": code})));
        code
    }

    fn stop_vm(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            vm.shutdown();
            self.shut_down = true;
        }
        self.deadline = None;
    }

    /// Checks the host for `spec` and builds its VM (not booted).
    fn build(&mut self, checked: &Checked) -> Result<(), VmmError> {
        let Some(spec) = &self.spec else {
            return Ok(());
        };
        let vm = Vmm::new(&spec.config, checked)?;
        let backend = vm.backend().unwrap_or("none");
        for ((host, slot), id) in vm.devices().iter().zip(&spec.ids) {
            let props = json!({"id": id, "host_bdf": host, "guest_bdf": info::guest_bdf(*slot), "backend": backend});
            self.events.emit("vm", "device-added", Some(props));
        }
        for (name, slot) in vm.devices().iter().skip(spec.ids.len()) {
            let props =
                json!({"id": name, "guest_bdf": info::guest_bdf(*slot), "backend": "virtio"});
            self.events.emit("vm", "device-added", Some(props));
        }
        self.vm = Some(vm);
        self.shut_down = false;
        Ok(())
    }

    /// Before a build with `--user`: guest RAM's pins fit the memlock limit
    /// whenever the switch to the user reaches the pinning thread.
    fn cover_memlock(&self) -> Result<(), crate::host::privileges::PrivilegeError> {
        match &self.spec {
            Some(spec) => {
                crate::host::privileges::cover_memlock(self.opts.user, spec.config.memory)
            }
            None => Ok(()),
        }
    }

    /// After the first build: no capability, no new privileges, maybe another user.
    fn drop_privileges(&mut self) -> Result<(), crate::host::privileges::PrivilegeError> {
        if !self.dropped {
            crate::host::privileges::drop_all(self.opts.user)?;
            self.dropped = true;
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), VmmError> {
        if let Some(vm) = self.vm.as_mut() {
            vm.boot()?;
            self.events.emit("vm", "booted", None);
        }
        Ok(())
    }

    /// Pre-flight for the spec's devices, answered as the CLI would say it.
    fn preflight(&self, config: &VmConfig) -> Result<Checked, Reply> {
        config
            .validate()
            .map_err(|e| Reply::error(400, error_chain(&e)))?;
        preflight::preflight(&self.host, &request_for(config))
            .map_err(|e| Reply::error(400, error_chain(&e)))
    }
}
