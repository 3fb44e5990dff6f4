//! Operator roles (docs/design.md §11): `viewer` reads, `operator` also changes services and
//! releases, `admin` also manages identities (join tokens, revocation, removing hosts). `[access]` in
//! coordinator.toml gives each operator name a role, with `default_role` for the rest; it is
//! read again on SIGHUP. What each ControlService rpc needs is [`CONTROL_RPCS`], the one table
//! the guard ([`crate::guard`]) consults.

use std::collections::BTreeMap;
use std::fmt;

use fleet_common::config::Section;

/// What an operator may do. Ordered: each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessRole {
    /// Read only: status, hosts, services, logs, queries, alerts, audit.
    Viewer,
    /// Also restart, start and stop services, upload artifacts, roll out, roll back, reload
    /// rules.
    Operator,
    /// Also manage join tokens, revoke certificates and remove hosts.
    Admin,
}

impl AccessRole {
    /// The name used in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessRole::Viewer => "viewer",
            AccessRole::Operator => "operator",
            AccessRole::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<AccessRole> {
        match s {
            "viewer" => Some(AccessRole::Viewer),
            "operator" => Some(AccessRole::Operator),
            "admin" => Some(AccessRole::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for AccessRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role each ControlService rpc needs. An rpc missing here is refused to everyone (a
/// unit test checks every rpc of the service is listed).
pub const CONTROL_RPCS: &[(&str, AccessRole)] = &[
    ("GetStatus", AccessRole::Viewer),
    ("ListHosts", AccessRole::Viewer),
    ("GetHost", AccessRole::Viewer),
    ("ListReports", AccessRole::Viewer),
    ("ListServices", AccessRole::Viewer),
    ("StreamLogs", AccessRole::Viewer),
    ("ListAudit", AccessRole::Viewer),
    ("StatArtifact", AccessRole::Viewer),
    ("GetRollout", AccessRole::Viewer),
    ("WatchRollout", AccessRole::Viewer),
    ("ListRollouts", AccessRole::Viewer),
    ("ListReleases", AccessRole::Viewer),
    ("Query", AccessRole::Viewer),
    ("ListRules", AccessRole::Viewer),
    ("ListAlerts", AccessRole::Viewer),
    ("WhoAmI", AccessRole::Viewer),
    ("ListJobs", AccessRole::Viewer),
    ("GetJobHistory", AccessRole::Viewer),
    ("RunServiceCommand", AccessRole::Operator),
    ("UploadArtifact", AccessRole::Operator),
    ("StartRollout", AccessRole::Operator),
    ("PauseRollout", AccessRole::Operator),
    ("ResumeRollout", AccessRole::Operator),
    ("AbortRollout", AccessRole::Operator),
    ("Rollback", AccessRole::Operator),
    ("ReloadRules", AccessRole::Operator),
    ("RunJob", AccessRole::Operator),
    ("DrainHost", AccessRole::Operator),
    ("UndrainHost", AccessRole::Operator),
    ("CreateToken", AccessRole::Admin),
    ("ListTokens", AccessRole::Admin),
    ("RevokeToken", AccessRole::Admin),
    ("RevokeCertificate", AccessRole::Admin),
    ("ListRevocations", AccessRole::Admin),
    ("RemoveHost", AccessRole::Admin),
    ("Exec", AccessRole::Admin),
];

/// The rpcs that change shared state or reach agents: with several coordinators only the
/// leader serves them (docs/design.md §13); the others refuse them, naming the leader.
/// Reads, artifact uploads (each coordinator keeps its own) and rule reloads (each its own
/// files) are served by every coordinator.
pub const LEADER_RPCS: &[&str] = &[
    "RunServiceCommand",
    "StartRollout",
    "PauseRollout",
    "ResumeRollout",
    "AbortRollout",
    "Rollback",
    "RunJob",
    "DrainHost",
    "UndrainHost",
    "CreateToken",
    "RevokeToken",
    "RevokeCertificate",
    "RemoveHost",
    "Exec",
];

/// The role `method` (the rpc name, as in `/fleet.v1.ControlService/<method>`) needs.
pub fn required_role(method: &str) -> Option<AccessRole> {
    CONTROL_RPCS.iter().find(|(m, _)| *m == method).map(|(_, r)| *r)
}

/// `[access]`: operator names to roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The role of operators not listed.
    pub default_role: AccessRole,
    /// Operators by name (the `<name>` of `spiffe://<td>/operator/<name>`).
    pub operators: BTreeMap<String, AccessRole>,
}

impl Default for Access {
    /// Least privilege: operators not listed can only look.
    fn default() -> Self {
        Access { default_role: AccessRole::Viewer, operators: BTreeMap::new() }
    }
}

impl Access {
    /// The role of operator `name`.
    pub fn role_of(&self, name: &str) -> AccessRole {
        self.operators.get(name).copied().unwrap_or(self.default_role)
    }

    /// Reads `[access]` from the config root; absent, every operator is a viewer.
    pub fn read(root: &mut Section) -> Access {
        let Some(mut s) = root.section("access") else { return Access::default() };
        let mut access = Access::default();
        let roles = "one of viewer, operator, admin";
        if let Some(r) = s.string("default_role") {
            match AccessRole::parse(&r) {
                Some(r) => access.default_role = r,
                None => s.error("default_role", format!("\"{r}\" is not a role; use {roles}")),
            }
        }
        for (name, role) in s.string_map("operators").unwrap_or_default() {
            if !fleet_common::identity::valid_name(&name) {
                s.error(&format!("operators.{name}"), "is not a valid operator name");
                continue;
            }
            match AccessRole::parse(&role) {
                Some(r) => {
                    access.operators.insert(name, r);
                }
                None => s.error(&format!("operators.{name}"), format!("\"{role}\" is not a role; use {roles}")),
            }
        }
        s.finish();
        access
    }

    /// Said at start and by check-config: nobody could manage tokens or revoke a certificate.
    pub fn warnings(&self) -> Vec<String> {
        if self.default_role < AccessRole::Admin && !self.operators.values().any(|r| *r == AccessRole::Admin) {
            vec![format!(
                "access: no operator is an admin (default_role = \"{}\"), so nobody can create join tokens, revoke certificates or remove hosts; add [access.operators] NAME = \"admin\"",
                self.default_role
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_rpc_declares_its_role() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(fleet_proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .find(|s| s.name() == "ControlService")
            .expect("ControlService in the descriptor set");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        for m in &methods {
            assert!(required_role(m).is_some(), "ControlService.{m} is missing from CONTROL_RPCS");
        }
        for (m, _) in CONTROL_RPCS {
            assert!(methods.contains(m), "CONTROL_RPCS lists {m}, which ControlService does not have");
        }
    }

    #[test]
    fn leader_rpcs_are_control_rpcs_that_change_something() {
        for m in LEADER_RPCS {
            let role = required_role(m).unwrap_or_else(|| panic!("{m} is not a ControlService rpc"));
            assert!(role > AccessRole::Viewer, "{m} is a read: every coordinator serves reads");
        }
    }

    #[test]
    fn roles_are_read_and_ordered() {
        let (mut root, errors) = fleet_common::config::parse_toml(
            "[access]\ndefault_role = \"operator\"\n[access.operators]\nalice = \"admin\"\nbob = \"viewer\"\n",
        )
        .unwrap();
        let a = Access::read(&mut root);
        root.finish();
        assert!(errors.is_empty());
        assert_eq!(a.role_of("alice"), AccessRole::Admin);
        assert_eq!(a.role_of("bob"), AccessRole::Viewer);
        assert_eq!(a.role_of("carol"), AccessRole::Operator);
        assert!(a.warnings().is_empty());
        assert!(AccessRole::Viewer < AccessRole::Operator && AccessRole::Operator < AccessRole::Admin);
        assert!(!Access::default().warnings().is_empty());

        let (mut root, errors) =
            fleet_common::config::parse_toml("[access]\ndefault_role = \"root\"\n[access.operators]\nx = \"god\"\n")
                .unwrap();
        Access::read(&mut root);
        let text = format!("{:?}", errors);
        assert!(text.contains("\\\"root\\\" is not a role"), "{text}");
        assert!(text.contains("access.operators.x"), "{text}");
    }
}
