//! `--log-format text|json` on the real binary: with json every log line on
//! stderr is one JSON object (time, level, message, target, thread); RUST_LOG
//! still filters; VFLAUNCH_LOG_FORMAT sets it too; a vCPU thread's lines name it
//! (`vcpu0`, ...); a bad value is a usage error.

mod common;

use common::*;
use serde_json::Value;

const VF: &str = "0000:ff:1f.7";
const VAR: &str = "PCIDEVICE_INTEL_COM_SRIOV_VFIO";

/// `vflaunch ARGS check --memory 64M` with one VF in the device plugin's
/// variable (no such device here): (exit code, stderr lines).
fn check_with(args: &[&str], envs: &[(&str, &str)]) -> (i32, Vec<String>) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["check", "--memory", "64M"]);
    let mut cmd = vflaunch_command(&all);
    cmd.env_remove("RUST_LOG")
        .env_remove("VFLAUNCH_LOG_FORMAT")
        .env(VAR, VF);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        stderr.lines().map(str::to_string).collect(),
    )
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_lines_have_time_level_message_target_thread() {
    let (code, lines) = check_with(&["--log-format", "json", "-v"], &[]);
    assert_eq!(code, 3, "the VF does not exist here: {lines:?}");
    let logs = json_lines(&lines);
    let line = logs
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains(VF))
        .unwrap_or_else(|| panic!("no line about {VF}: {lines:?}"));
    assert!(line["message"].as_str().unwrap().contains(VAR), "{line}");
    assert_eq!(line["level"], "INFO");
    assert!(
        line["target"].as_str().unwrap().starts_with("vflaunch"),
        "{line}"
    );
    assert_eq!(line["thread"], "main");
    // RFC 3339 in UTC, to the microsecond: 2026-12-01T17:12:27.123456Z
    let time = line["time"].as_str().unwrap();
    assert_eq!(time.len(), 27, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    for l in &logs {
        let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["level", "message", "target", "thread", "time"],
            "{l}"
        );
    }
}

#[test]
fn rust_log_still_filters_json_lines() {
    let (_, lines) = check_with(&["--log-format", "json", "-v"], &[("RUST_LOG", "warn")]);
    assert!(
        json_lines(&lines).iter().all(|l| l["level"] != "INFO"),
        "{lines:?}"
    );
    let (_, lines) = check_with(&["--log-format", "json"], &[("RUST_LOG", "debug")]);
    assert!(
        json_lines(&lines).iter().any(|l| l["level"] == "INFO"),
        "{lines:?}"
    );
}

#[test]
fn text_is_the_default_and_the_env_var_selects_json() {
    let (_, lines) = check_with(&["-v"], &[]);
    let line = lines
        .iter()
        .find(|l| l.contains(VF))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(line.starts_with("[INFO "), "{line}");
    assert!(serde_json::from_str::<Value>(line).is_err());
    let (_, lines) = check_with(&["-v"], &[("VFLAUNCH_LOG_FORMAT", "json")]);
    assert!(!json_lines(&lines).is_empty());
    // A global flag: after the subcommand too.
    let out = vflaunch_command(&["check", "--log-format", "json", "-h"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_vcpu_line_names_its_vcpu_thread() {
    if let Some(why) = kvm_unusable() {
        return skip("a_vcpu_line_names_its_vcpu_thread", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let code = tiny_poweroff_code(b"hi\n", 0x34);
    let kernel = write_file(dir.path(), "guest.elf", &elf64(&code, false));
    let out = run_vflaunch(
        &[
            "--log-format",
            "json",
            "run",
            "-vv",
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--cpus",
            "2",
            "--no-devices-from-env",
            "--serial",
            "null",
        ],
        &[],
        std::time::Duration::from_secs(60),
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(out.status.code(), Some(0), "{lines:?}");
    let logs = json_lines(&lines);
    // Each vCPU thread logs under its own name, e.g. when it stops.
    for id in ["0", "1"] {
        let mine: Vec<&Value> = logs
            .iter()
            .filter(|l| l["thread"] == format!("vcpu{id}").as_str())
            .collect();
        let stopped = format!("vCPU {id} stopped");
        assert!(
            mine.iter()
                .any(|l| l["level"] == "DEBUG"
                    && l["message"].as_str().unwrap().starts_with(&stopped)),
            "no {stopped:?} from thread vcpu{id}: {lines:?}"
        );
    }
}

#[test]
fn an_unknown_format_is_a_usage_error() {
    let (code, lines) = check_with(&["--log-format", "xml"], &[]);
    assert_eq!(code, 2, "{lines:?}");
    assert!(lines.join("\n").contains("text, json"), "{lines:?}");
}
