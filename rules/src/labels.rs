//! A series' label set: names and values sorted by name, each an `Arc<str>`.
//!
//! Rule evaluation at fleet scale materialises the labels of tens of thousands of series a few
//! times a minute. As a `BTreeMap<String, String>` each set cost a 540-byte tree node and two
//! allocations per label (about 800 bytes for a service series); here it is one small vector
//! whose strings are shared with the store that interned them, so copying a series' labels
//! costs reference counts. It keeps the map's semantics: one value per name, iteration in name
//! order, and equality, ordering and hashing by content.

use std::fmt;
use std::sync::Arc;

/// A label set, `__name__` included.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<(Arc<str>, Arc<str>)>);

impl Labels {
    /// No labels.
    pub fn new() -> Labels {
        Labels(Vec::new())
    }

    /// FNV-1a over the label pairs in order: the same in every build and run, so it can be
    /// kept on disk (remote write's marks) or decide something reproducibly (`limit_ratio`).
    pub fn stable_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, v) in self.iter() {
            for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// Labels from pairs already sorted by name, with no name twice (a store's own series).
    pub fn from_sorted(pairs: Vec<(Arc<str>, Arc<str>)>) -> Labels {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name, each once");
        Labels(pairs)
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).ok().map(|i| &*self.0[i].1)
    }

    /// The value of `name`, shared.
    pub fn get_shared(&self, name: &str) -> Option<&Arc<str>> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Whether `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: impl Into<Arc<str>> + AsRef<str>, value: impl Into<Arc<str>>) -> Option<Arc<str>> {
        match self.find(name.as_ref()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value.into())),
            Err(i) => {
                self.0.insert(i, (name.into(), value.into()));
                None
            }
        }
    }

    /// Unsets `name`; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Arc<str>> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    /// Keeps the labels for which `keep(name, value)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// The labels whose names `keep` accepts (sharing their strings).
    pub fn filtered(&self, keep: impl Fn(&str) -> bool) -> Labels {
        Labels(self.0.iter().filter(|(k, _)| keep(k)).cloned().collect())
    }

    /// (name, value) pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The pairs as owned strings, into any map (for protocols and templates that want those).
    pub fn to_owned_map<C: FromIterator<(String, String)>>(&self) -> C {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Arc<str>> + AsRef<str>, V: Into<Arc<str>>> FromIterator<(K, V)> for Labels {
    /// As a map collects: a later value for a name replaces an earlier one.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Labels {
        let mut l = Labels::new();
        for (k, v) in iter {
            l.insert(k, v);
        }
        l
    }
}

impl<K: Into<Arc<str>> + AsRef<str>, V: Into<Arc<str>>> Extend<(K, V)> for Labels {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        let m = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        Ok(m.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_sorted_map() {
        let mut l: Labels = [("job", "a"), ("__name__", "up"), ("instance", "x"), ("job", "b")].into_iter().collect();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["__name__", "instance", "job"]);
        assert_eq!(l.get("job"), Some("b"), "the later value wins, as when a map collects");
        assert_eq!(l.insert("instance", "y").as_deref(), Some("x"));
        assert_eq!(l.remove("__name__").as_deref(), Some("up"));
        assert_eq!(l.remove("nope"), None);
        l.retain(|k, _| k != "job");
        assert_eq!(l.iter().collect::<Vec<_>>(), [("instance", "y")]);
        let m: std::collections::BTreeMap<&str, &str> = [("a", "1"), ("b", "2")].into();
        let from_map: Labels = m.clone().into_iter().collect();
        assert_eq!(serde_json::to_string(&from_map).unwrap(), serde_json::to_string(&m).unwrap());
        let back: Labels = serde_json::from_str(r#"{"b":"2","a":"1"}"#).unwrap();
        assert_eq!(back, from_map);
        let (x, y): (Labels, Labels) =
            ([("a", "1")].into_iter().collect(), [("a", "1"), ("b", "0")].into_iter().collect());
        assert!(x < y, "ordered as a map is: by pairs in name order");
    }
}
