//! The API's actions on the VM: what each request does to the controller's
//! state, and the answer it gets.

use serde_json::{json, Value};

use super::{cold_plug, info, Controller, Next, Spec};
use crate::api::types::{self, CreateRequest};
use crate::api::{Action, Reply};
use crate::config::SerialMode;
use crate::error::{error_chain, exit_code};
use crate::vmm::{VmState, Vmm, VmmError};

impl Controller {
    pub(super) fn handle(&mut self, action: Action) -> (Reply, Next) {
        let done =
            |r: Result<(), Reply>| (r.map_or_else(|e| e, |()| Reply::done()), Next::Continue);
        match action {
            Action::Ping => (Reply::ok(info::ping()), Next::Continue),
            Action::VmmShutdown => (Reply::done(), Next::Exit(exit_code::OK)),
            Action::VmInfo => (self.info(), Next::Continue),
            Action::VmCounters => (self.counters(), Next::Continue),
            Action::VmCreate(body) => done(self.create(&body)),
            Action::VmAddDevice(body) => self.add_device(&body),
            Action::VmAddDisk(body) => self.add_virtio(&body, cold_plug::Kind::Disk, &[]),
            Action::VmAddNet(body, fds) => self.add_virtio(&body, cold_plug::Kind::Net, &fds.0),
            Action::VmAddVsock(body) => self.add_virtio(&body, cold_plug::Kind::Vsock, &[]),
            Action::VmBoot => done(self.boot()),
            Action::VmShutdown => done(self.shutdown_vm()),
            Action::VmReboot => done(self.shutdown_vm().and_then(|()| self.boot())),
            Action::VmDelete => {
                self.stop_vm();
                self.spec = None;
                self.shut_down = false;
                done(Ok(()))
            }
            Action::VmPowerButton => done(self.vm_call(
                "press the power button",
                "power-button",
                |vm| vm.power_button(),
            )),
            Action::VmPause => done(self.vm_call("pause", "paused", Vmm::pause)),
            Action::VmResume => done(self.vm_call("resume", "resumed", Vmm::resume)),
            Action::Unsupported(why) => (Reply::error(400, why), Next::Continue),
        }
    }

    fn vm_call(
        &mut self,
        what: &str,
        event: &str,
        f: impl FnOnce(&mut Vmm) -> Result<(), VmmError>,
    ) -> Result<(), Reply> {
        let Some(vm) = self.vm.as_mut() else {
            let status = if self.spec.is_some() { 405 } else { 404 };
            return Err(Reply::error(
                status,
                format!("cannot {what}: the VM is not running"),
            ));
        };
        f(vm).map_err(|e| Reply::error(405, error_chain(&e)))?;
        self.events.emit("vm", event, None);
        Ok(())
    }

    fn create(&mut self, body: &Value) -> Result<(), Reply> {
        if self.spec.is_some() {
            return Err(Reply::error(400, "a VM exists already: vm.delete it first"));
        }
        let CreateRequest {
            config,
            device_ids,
            serial,
        } = types::create_request(body).map_err(|e| Reply::error(400, e))?;
        let mut config = config;
        config.serial = match serial.mode.as_str() {
            "Off" => SerialMode::Off,
            "Null" => SerialMode::Null,
            "File" => SerialMode::File(serial.file.unwrap_or_default()),
            "Socket" => SerialMode::Socket(serial.socket.unwrap_or_default()),
            _ => SerialMode::Tty,
        };
        self.preflight(&config)?;
        let ids = device_ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| id.unwrap_or_else(|| format!("vfio{i}")))
            .collect();
        let echo = info::echo_body(body, &config);
        self.spec = Some(Spec { config, ids, echo });
        self.shut_down = false;
        self.events.emit("vm", "created", None);
        Ok(())
    }

    fn boot(&mut self) -> Result<(), Reply> {
        if self.vm.is_some() {
            return Err(Reply::error(405, "the VM is booted already"));
        }
        let Some(spec) = &self.spec else {
            return Err(Reply::error(404, "no VM: vm.create first"));
        };
        let devices = self.preflight(&spec.config)?;
        let status = |e: &VmmError| {
            // What the caller named and the host refused: a bad kernel, a
            // locked image, a missing tap, a vsock socket in use.
            if matches!(
                e,
                VmmError::Boot(_) | VmmError::Disk(_) | VmmError::Vsock(_) | VmmError::Tap(_)
            ) {
                400
            } else {
                500
            }
        };
        self.cover_memlock()
            .map_err(|e| Reply::error(500, error_chain(&e)))?;
        self.build(&devices)
            .map_err(|e| Reply::error(status(&e), error_chain(&e)))?;
        if let Err(e) = self.drop_privileges() {
            self.stop_vm();
            return Err(Reply::error(500, error_chain(&e)));
        }
        self.start().map_err(|e| {
            self.stop_vm();
            Reply::error(500, error_chain(&e))
        })
    }

    fn shutdown_vm(&mut self) -> Result<(), Reply> {
        if self.vm.is_none() {
            return Err(Reply::error(
                if self.spec.is_some() { 405 } else { 404 },
                "the VM is not running",
            ));
        }
        self.stop_vm();
        self.events
            .emit("vm", "shutdown", Some(json!({"cause": "vm.shutdown"})));
        Ok(())
    }

    fn info(&self) -> Reply {
        let Some(spec) = &self.spec else {
            return Reply::error(404, "no VM: vm.create first");
        };
        let state = match self.vm.as_ref().map(Vmm::state) {
            Some(VmState::Running) => "Running",
            Some(VmState::Paused) => "Paused",
            Some(VmState::Created) => "Created",
            Some(VmState::Stopped) => "Shutdown",
            None if self.shut_down => "Shutdown",
            None => "Created",
        };
        let slots = self.vm.as_ref().map(|v| v.devices().to_vec());
        Reply::ok(info::vm_info(
            state,
            &spec.echo,
            &spec.config,
            &spec.ids,
            slots.as_deref(),
        ))
    }

    fn counters(&self) -> Reply {
        match &self.vm {
            Some(vm) => Reply::ok(info::counters(vm, &self.host)),
            None => Reply::error(404, "no running VM"),
        }
    }
}
