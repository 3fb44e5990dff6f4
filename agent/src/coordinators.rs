//! The coordinators the agent keeps a session to: those its config lists, and the members of
//! their cluster it learned from a Welcome (docs/design.md §13).
//!
//! A coordinator of a cluster says in its Welcome which member it is (`https://ADVERTISE`)
//! and lists every live member. The agent starts a session to each member none of its
//! sessions reaches yet, and remembers it in `data_dir/coordinators.json`, so a restart
//! attaches to the whole cluster even while the configured coordinators are down. Members
//! are learned only once every configured coordinator has said which member it is: a member
//! the config names by another address (a host name where the cluster advertises an IP) is
//! never given a second session. A learned member that turns out to be reached already (a
//! configured coordinator said it is that member) is dropped, and so is one no Welcome has
//! listed for [`FORGET_AFTER`] (the member left the cluster); one that is only down keeps
//! its session, and the outbox keeps its reports for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::MAX_COORDINATORS;

/// The file, under data_dir, that holds what the agent learned.
pub const FILE: &str = "coordinators.json";

/// How long a learned member may go unlisted by every Welcome before the agent forgets it.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Sessions to start and to stop, sent to whoever runs the sessions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    /// Addresses to open a session to.
    pub start: Vec<String>,
    /// Addresses whose session ends.
    pub stop: Vec<String>,
}

/// What is kept in [`FILE`].
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Known {
    /// Per session address, the member its coordinator said it is.
    #[serde(default)]
    selves: BTreeMap<String, String>,
    /// Learned session addresses, with the last time (ms since the epoch) a Welcome listed
    /// each.
    #[serde(default)]
    learned: BTreeMap<String, i64>,
}

/// The agent's coordinators.
#[derive(Debug)]
pub struct Coordinators {
    path: PathBuf,
    configured: Vec<String>,
    known: Mutex<Known>,
    changes: Option<mpsc::Sender<Change>>,
}

/// An address as compared: without a trailing slash.
fn normal(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

impl Coordinators {
    /// The configured coordinators plus what `data_dir` remembers; `changes` receives the
    /// sessions to start and stop as Welcomes arrive (`None`: nothing is learned).
    pub fn open(data_dir: &Path, configured: &[String], changes: Option<mpsc::Sender<Change>>) -> Coordinators {
        let path = data_dir.join(FILE);
        let mut known: Known = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the learned coordinators; learning them again");
                Known::default()
            }),
            Err(_) => Known::default(),
        };
        let configured: Vec<String> = configured.iter().map(|c| normal(c)).collect();
        known.learned.retain(|l, _| !configured.contains(l));
        let room = MAX_COORDINATORS.saturating_sub(configured.len());
        while known.learned.len() > room {
            let oldest = known.learned.iter().min_by_key(|(_, t)| **t).map(|(l, _)| l.clone());
            if let Some(l) = oldest {
                known.learned.remove(&l);
            }
        }
        let sessions: Vec<String> = configured.iter().chain(known.learned.keys()).cloned().collect();
        known.selves.retain(|s, _| sessions.contains(s));
        Coordinators { path, configured, known: Mutex::new(known), changes }
    }

    /// Every address the agent keeps a session to: the configured ones first, then the
    /// learned ones.
    pub fn all(&self) -> Vec<String> {
        let known = self.known.lock().expect("coordinators lock");
        self.configured.iter().chain(known.learned.keys()).cloned().collect()
    }

    /// The learned addresses.
    pub fn learned(&self) -> Vec<String> {
        self.known.lock().expect("coordinators lock").learned.keys().cloned().collect()
    }

    /// The session to `session` was welcomed by member `me` (empty: a coordinator alone)
    /// listing `members`: learns and forgets members, remembers it, and sends the change.
    pub fn welcomed(&self, session: &str, me: &str, members: &[String], now_ms: i64) -> Change {
        let change = {
            let mut known = self.known.lock().expect("coordinators lock");
            let change = self.learn(&mut known, &normal(session), &normal(me), members, now_ms);
            if let Err(e) = self.save(&known) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remember the learned coordinators");
            }
            change
        };
        if change != Change::default() {
            for s in &change.start {
                tracing::info!(coordinator = %s, "learned a coordinator of the cluster; attaching to it too");
            }
            for s in &change.stop {
                tracing::info!(coordinator = %s, "no longer attaching to a learned coordinator");
            }
            if let Some(tx) = &self.changes
                && tx.try_send(change.clone()).is_err()
            {
                tracing::warn!("too many coordinator changes at once; the next welcome applies them");
            }
        }
        change
    }

    fn learn(&self, known: &mut Known, session: &str, me: &str, members: &[String], now_ms: i64) -> Change {
        let mut change = Change::default();
        if me.is_empty() {
            known.selves.remove(session);
        } else {
            known.selves.insert(session.to_string(), me.to_string());
        }
        let members: Vec<String> = members.iter().map(|m| normal(m)).filter(|m| !m.is_empty()).collect();
        for m in &members {
            if let Some(t) = known.learned.get_mut(m) {
                *t = now_ms;
            }
        }
        // The member each session reaches (its own address until its coordinator said).
        let reaches = |known: &Known, s: &str| known.selves.get(s).cloned().unwrap_or_else(|| s.to_string());
        // Learned sessions that reach a member another session reaches, or that no Welcome
        // listed for a day.
        let forget_before = now_ms - FORGET_AFTER.as_millis() as i64;
        let learned: Vec<String> = known.learned.keys().cloned().collect();
        for l in learned {
            let target = reaches(known, &l);
            let duplicate = self.configured.iter().any(|c| reaches(known, c) == target)
                || known.learned.keys().any(|o| *o < l && reaches(known, o) == target);
            if duplicate || known.learned[&l] < forget_before {
                known.learned.remove(&l);
                known.selves.remove(&l);
                change.stop.push(l);
            }
        }
        // New members, once every configured coordinator said which member it is.
        if self.configured.iter().all(|c| known.selves.contains_key(c)) {
            for m in members {
                let sessions: Vec<String> = self.configured.iter().chain(known.learned.keys()).cloned().collect();
                let reached = sessions.iter().any(|s| *s == m || reaches(known, s) == m);
                if reached {
                    continue;
                }
                if sessions.len() >= MAX_COORDINATORS {
                    tracing::warn!(coordinator = %m, "the cluster lists more coordinators than an agent attaches to ({MAX_COORDINATORS}); not attaching to this one");
                    continue;
                }
                known.learned.insert(m.clone(), now_ms);
                change.start.push(m);
            }
        }
        change
    }

    fn save(&self, known: &Known) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(known).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn learns_the_members_no_session_reaches_and_remembers_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinators::open(dir.path(), &urls(&["https://coord-a:7443"]), None);
        let members = urls(&["https://10.0.0.1:7443", "https://10.0.0.2:7443", "https://10.0.0.3:7443"]);
        // The configured coordinator is member 10.0.0.1 under another name: not learned twice.
        let ch = c.welcomed("https://coord-a:7443", "https://10.0.0.1:7443", &members, 1000);
        assert_eq!(ch.start, urls(&["https://10.0.0.2:7443", "https://10.0.0.3:7443"]));
        assert!(ch.stop.is_empty());
        // A learned member's own welcome changes nothing.
        let ch = c.welcomed("https://10.0.0.2:7443", "https://10.0.0.2:7443", &members, 2000);
        assert_eq!(ch, Change::default());
        assert_eq!(c.all().len(), 3);
        // Remembered across a restart.
        let again = Coordinators::open(dir.path(), &urls(&["https://coord-a:7443"]), None);
        assert_eq!(again.learned(), urls(&["https://10.0.0.2:7443", "https://10.0.0.3:7443"]));
    }

    #[test]
    fn waits_for_every_configured_coordinator_to_say_which_member_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinators::open(dir.path(), &urls(&["https://a:7443", "https://b:7443"]), None);
        let members = urls(&["https://10.0.0.1:7443", "https://10.0.0.2:7443", "https://10.0.0.3:7443"]);
        // b may be 10.0.0.2 or 10.0.0.3: nothing is learned before it says.
        assert_eq!(c.welcomed("https://a:7443", "https://10.0.0.1:7443", &members, 1000), Change::default());
        let ch = c.welcomed("https://b:7443", "https://10.0.0.2:7443", &members, 1000);
        assert_eq!(ch.start, urls(&["https://10.0.0.3:7443"]));
    }

    #[test]
    fn drops_a_learned_member_a_configured_one_reaches_or_no_welcome_lists() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinators::open(dir.path(), &urls(&["https://a:7443", "https://b:7443"]), None);
        let members = urls(&["https://10.0.0.1:7443", "https://10.0.0.2:7443", "https://10.0.0.3:7443"]);
        c.welcomed("https://a:7443", "https://10.0.0.1:7443", &members, 0);
        c.welcomed("https://b:7443", "https://10.0.0.2:7443", &members, 0);
        assert_eq!(c.learned(), urls(&["https://10.0.0.3:7443"]));
        // b is moved to the machine of 10.0.0.3: the learned session to it ends.
        let ch = c.welcomed(
            "https://b:7443",
            "https://10.0.0.3:7443",
            &urls(&["https://10.0.0.1:7443", "https://10.0.0.3:7443"]),
            10,
        );
        assert_eq!(ch.stop, urls(&["https://10.0.0.3:7443"]));
        assert!(c.learned().is_empty());
        // A member unlisted for a day is forgotten; one listed again in time is kept.
        let ch = c.welcomed("https://a:7443", "https://10.0.0.1:7443", &members, 20);
        assert_eq!(ch.start, urls(&["https://10.0.0.2:7443"]));
        let day = FORGET_AFTER.as_millis() as i64;
        let ch = c.welcomed("https://a:7443", "https://10.0.0.1:7443", &urls(&["https://10.0.0.1:7443"]), 20 + day / 2);
        assert_eq!(ch, Change::default());
        let ch = c.welcomed("https://a:7443", "https://10.0.0.1:7443", &urls(&["https://10.0.0.1:7443"]), 21 + day);
        assert_eq!(ch.stop, urls(&["https://10.0.0.2:7443"]));
    }

    #[test]
    fn a_coordinator_alone_teaches_nothing_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinators::open(dir.path(), &urls(&["https://a:7443"]), None);
        assert_eq!(c.welcomed("https://a:7443", "", &[], 0), Change::default());
        let many: Vec<String> = (1..=20).map(|i| format!("https://10.0.0.{i}:7443")).collect();
        let ch = c.welcomed("https://a:7443", "https://10.0.0.1:7443", &many, 0);
        assert_eq!(ch.start.len(), MAX_COORDINATORS - 1);
        assert_eq!(c.all().len(), MAX_COORDINATORS);
    }
}
