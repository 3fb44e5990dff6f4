//! fleetctl's help shows each command's own flags: the connection flags belong to the commands
//! that talk to the coordinator, not to the offline ones.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn connection_flags_appear_only_where_they_are_used() {
    for offline in [&["certs", "init"][..], &["certs", "issue"], &["dev"], &["rules", "test"], &["rules", "check"]] {
        let h = help(offline);
        assert!(!h.contains("--addr") && !h.contains("--cert <"), "{offline:?} shows connection flags:\n{h}");
    }
    for online in
        [&["hosts"][..], &["restart"], &["rollout", "start"], &["rollout", "status"], &["rules", "reload"], &["query"]]
    {
        let h = help(online);
        assert!(h.contains("Connection:") && h.contains("--addr") && h.contains("FLEET_ADDR"), "{online:?}:\n{h}");
    }
}
