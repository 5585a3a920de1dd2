//! Tests for the command line: flags, the config file, device intake.

use std::fs;

use clap::{error::ErrorKind, CommandFactory};

use super::*;
use crate::host::bdf::PciAddrError;

/// A temp dir holding a kernel `k`; `$D` in argv strings expands to it.
struct Fixture(tempfile::TempDir);

fn fixture() -> Fixture {
    let f = Fixture(tempfile::tempdir().unwrap());
    f.write("k", "kernel");
    f
}

fn env_vec(env: &[(&str, &str)]) -> Vec<(String, String)> {
    let owned = |(k, v): &(&str, &str)| (k.to_string(), v.to_string());
    env.iter().map(owned).collect()
}

fn bdfs(list: &[&str]) -> Vec<Bdf> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

impl Fixture {
    fn dir(&self) -> String {
        self.0.path().to_string_lossy().into_owned()
    }
    fn write(&self, name: &str, text: &str) {
        fs::write(self.0.path().join(name), text).unwrap();
    }
    /// Parses whitespace-separated argv after `vflaunch`.
    fn parse(&self, args: &str) -> Result<Cli, clap::Error> {
        let args = args.replace("$D", &self.dir());
        Cli::try_parse_from(["vflaunch"].into_iter().chain(args.split_whitespace()))
    }
    /// `vflaunch run ARGS` → config; the default network-info path is `$D/network-info`.
    fn run(&self, args: &str, env: &[(&str, &str)]) -> Result<VmConfig, CliError> {
        let Some(Command::Run(run)) = self.parse(&format!("run {args}")).unwrap().command else {
            panic!("not run");
        };
        run.to_config_with(&env_vec(env), &self.0.path().join("network-info"))
    }
    fn check(&self, args: &str, env: &[(&str, &str)]) -> (CheckArgs, Vec<Bdf>) {
        let Some(Command::Check(check)) = self.parse(&format!("check {args}")).unwrap().command
        else {
            panic!("not check");
        };
        let devices = check.devices_with(&env_vec(env), &self.0.path().join("network-info"));
        (check, devices.unwrap())
    }
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn help_teaches_examples_units_and_defaults() {
    let help = Cli::command().render_long_help().to_string();
    assert!(
        help.contains("--device 0000:03:02.1") && help.contains("PCIDEVICE_"),
        "{help}"
    );
    let mut cmd = Cli::command();
    let help = cmd
        .find_subcommand_mut("run")
        .unwrap()
        .render_long_help()
        .to_string();
    for needle in [
        "[default: 512M]",
        "plain number is MiB",
        "[default: 1]",
        "--vfio",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in {help}");
    }
    let version = fixture().parse("--version").unwrap_err();
    assert_eq!(version.kind(), ErrorKind::DisplayVersion);
}

#[test]
fn defaults() {
    let f = fixture();
    let cfg = f.run("--kernel $D/k", &[]).unwrap();
    assert_eq!(cfg, VmConfig::new(f.0.path().join("k")));
}

#[test]
fn flags_override_config_file_which_overrides_defaults() {
    let f = fixture();
    f.write("i", "initrd");
    f.write("k2", "kernel");
    let d = f.dir();
    f.write(
        "vm.json",
        &format!(
            r#"{{"kernel": "{d}/k", "initramfs": "{d}/i", "cmdline": "quiet", "memory": 1024,
                "cpus": 2, "hugepages": true, "allow_unsafe_interrupts": true}}"#
        ),
    );
    let cfg = f.run("--config $D/vm.json", &[]).unwrap();
    assert_eq!(cfg.kernel, f.0.path().join("k"));
    assert_eq!(cfg.initramfs, Some(f.0.path().join("i")));
    assert_eq!(
        (cfg.cmdline.as_str(), cfg.memory, cfg.cpus),
        ("quiet", 1 << 30, 2)
    );
    assert!(cfg.allow_unsafe_interrupts);
    assert!(cfg.hugepages);
    let args = "--config $D/vm.json --kernel $D/k2 --memory 2G --cpus 4 --cmdline console=hvc0";
    let cfg = f.run(args, &[]).unwrap();
    assert_eq!(cfg.kernel, f.0.path().join("k2"));
    assert_eq!(
        (cfg.cmdline.as_str(), cfg.memory, cfg.cpus),
        ("console=hvc0", 2 << 30, 4)
    );
}

#[test]
fn devices_are_union_of_flags_and_config_deduplicated() {
    let f = fixture();
    f.write(
        "vm.json",
        r#"{"devices": ["0000:03:04.3", "0000:03:02.1"]}"#,
    );
    let args =
        "--kernel $D/k --device 03:02.1,0000:03:02.2 --vfio 0000:03:02.1 --config $D/vm.json";
    let cfg = f.run(args, &[("PCIDEVICE_X", "0000:99:00.1")]).unwrap();
    assert_eq!(
        cfg.devices,
        bdfs(&["0000:03:02.1", "0000:03:02.2", "0000:03:04.3"])
    );
}

#[test]
fn env_intake_is_default_only_without_explicit_devices() {
    let f = fixture();
    let env = [("PCIDEVICE_INTEL_COM_SRIOV", "0000:03:02.1,0000:03:04.3,")];
    let cfg = f.run("--kernel $D/k", &env).unwrap();
    assert_eq!(cfg.devices, bdfs(&["0000:03:02.1", "0000:03:04.3"]));
    let cfg = f.run("--kernel $D/k --no-devices-from-env", &env).unwrap();
    assert!(cfg.devices.is_empty());
    f.write("vm.json", r#"{"devices": []}"#);
    let cfg = f.run("--kernel $D/k --config $D/vm.json", &env).unwrap();
    assert!(
        cfg.devices.is_empty(),
        "an explicit empty list disables the default"
    );
    let cfg = f
        .run(
            "--kernel $D/k --device 0000:65:00.0 --devices-from-env",
            &env,
        )
        .unwrap();
    assert_eq!(
        cfg.devices,
        bdfs(&["0000:65:00.0", "0000:03:02.1", "0000:03:04.3"])
    );
}

#[test]
fn network_info_default_path_and_flag() {
    let f = fixture();
    f.write("network-info", r#"{"net1": "0000:04:02.5"}"#);
    let env = [("PCI_RESOURCE_A", "0000:04:02.5,0000:04:02.6")];
    let cfg = f.run("--kernel $D/k", &env).unwrap();
    assert_eq!(cfg.devices, bdfs(&["0000:04:02.5", "0000:04:02.6"]));
    let pci = r#"{"type":"pci","pci":{"pci-address":"0000:65:00.2"}}"#;
    f.write(
        "ni.json",
        &format!(r#"{{"interfaces":[{{"network":"a","deviceInfo":{pci}}}]}}"#),
    );
    let args = "--kernel $D/k --device 0000:03:02.1 --network-info $D/ni.json";
    let cfg = f.run(args, &env).unwrap();
    assert_eq!(cfg.devices, bdfs(&["0000:03:02.1", "0000:65:00.2"]));
    let err = f
        .run("--kernel $D/k --network-info $D/nope", &[])
        .unwrap_err();
    assert!(matches!(
        err,
        CliError::Intake(IntakeError::ReadNetworkInfo { .. })
    ));
}

#[test]
fn devices_from_env_requires_something_to_be_found() {
    let f = fixture();
    let err = f.run("--kernel $D/k --devices-from-env", &[]).unwrap_err();
    assert!(matches!(err, CliError::NoEnvDevices));
    let err = f
        .parse("run --devices-from-env --no-devices-from-env")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
}

#[test]
fn missing_kernel() {
    let f = fixture();
    let err = f.run("--memory 1G", &[]).unwrap_err();
    assert!(matches!(err, CliError::NoKernel));
    assert!(err.to_string().contains("--kernel PATH"));
    let err = f.run("--kernel $D/none", &[]).unwrap_err();
    assert!(matches!(
        err,
        CliError::Config(ConfigError::FileMissing { .. })
    ));
}

#[test]
fn bad_values_are_rejected_with_the_right_error() {
    let f = fixture();
    let err = f
        .parse("run --device 0000:03:02.1,0000:03:02.9")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    let src = std::error::Error::source(&err).and_then(|e| e.downcast_ref());
    assert!(matches!(src, Some(PciAddrError::Function(_))), "{err}");
    let err = f.parse("check --memory 2GB").unwrap_err();
    let src = std::error::Error::source(&err).and_then(|e| e.downcast_ref());
    assert!(matches!(src, Some(ConfigError::InvalidSize(_))), "{err}");
    let err = f.parse("run --cpus 33").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);

    let err = f
        .run("--kernel $D/k", &[("PCIDEVICE_A", "bogus")])
        .unwrap_err();
    assert!(matches!(
        err,
        CliError::Intake(IntakeError::BadAddress { .. })
    ));
    let err = f.run("--kernel $D/k --memory 101M", &[]).unwrap_err();
    assert!(matches!(
        err,
        CliError::Config(ConfigError::MemoryUnaligned(_))
    ));
    f.write("vm.json", r#"{"memory": "big"}"#);
    let err = f.run("--kernel $D/k --config $D/vm.json", &[]).unwrap_err();
    assert!(matches!(
        err,
        CliError::Config(ConfigError::JsonFile { .. })
    ));
}

#[test]
fn check_args() {
    let f = fixture();
    let env = [("PCIDEVICE_A", "0000:03:02.1")];
    let (check, devices) = f.check("", &env);
    assert_eq!(
        (check.memory, check.allow_unsafe_interrupts, check.hugepages),
        (DEFAULT_MEMORY, false, false)
    );
    assert!(f.check("--hugepages", &env).0.hugepages);
    assert_eq!(devices, bdfs(&["0000:03:02.1"]));
    let (check, devices) = f.check("--device 4:0.0 --memory 2G --allow-unsafe-interrupts", &env);
    assert_eq!(
        (check.memory, check.allow_unsafe_interrupts),
        (2 << 30, true)
    );
    assert_eq!(devices, bdfs(&["0000:04:00.0"]));
    let (_, devices) = f.check("--device 0000:04:00.0 --devices-from-env", &env);
    assert_eq!(devices, bdfs(&["0000:04:00.0", "0000:03:02.1"]));
}

#[test]
fn doctor_bind_and_unbind_arguments() {
    let f = fixture();
    let cli = f
        .parse("doctor --device 02:10.0,0000:02:10.4 --memory 2G --json")
        .unwrap();
    let Some(Command::Doctor(args)) = cli.command else {
        panic!("{cli:?}")
    };
    assert_eq!(args.devices, bdfs(&["0000:02:10.0", "0000:02:10.4"]));
    assert_eq!((args.memory, args.json), (2 << 30, true));
    let Some(Command::Doctor(args)) = f.parse("doctor").unwrap().command else {
        panic!()
    };
    assert_eq!(
        (args.devices.len(), args.memory, args.json),
        (0, 512 << 20, false)
    );
    let Some(Command::Bind(args)) = f.parse("bind 02:10.0 02:11.4").unwrap().command else {
        panic!()
    };
    assert_eq!(args.devices, bdfs(&["0000:02:10.0", "0000:02:11.4"]));
    let Some(Command::Unbind(args)) = f.parse("unbind 0000:02:10.0").unwrap().command else {
        panic!()
    };
    assert_eq!(args.devices, bdfs(&["0000:02:10.0"]));
    let err = f.parse("bind").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    assert!(f.parse("unbind 02:10.9").is_err());
}

#[test]
fn device_fds_and_backend() {
    let f = fixture();
    let cfg = f
        .run("--kernel $D/k --device 0000:03:02.1,fd=7,03:02.2 --iommufd-fd 5 --vfio-backend iommufd", &[])
        .unwrap();
    assert_eq!(cfg.devices, bdfs(&["0000:03:02.1", "0000:03:02.2"]));
    assert_eq!(cfg.preopened.devices, vec![(bdfs(&["0000:03:02.1"])[0], 7)]);
    assert_eq!(cfg.preopened.iommufd, Some(5));
    assert_eq!(
        cfg.vfio_backend,
        crate::host::backend::BackendChoice::Iommufd
    );
    let err = f
        .run("--kernel $D/k --device fd=7,0000:03:02.1", &[])
        .unwrap_err();
    assert!(matches!(err, CliError::FdWithoutDevice(7)), "{err}");
    let err = f.parse("run --vfio-backend vfio").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert_eq!(
        f.run("--kernel $D/k", &[]).unwrap().vfio_backend,
        Default::default()
    );
}
