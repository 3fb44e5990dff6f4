//! Reading TOML config files so that every problem is reported at once, each with the file and
//! the full key (`services[1].health.http`), and unknown keys are errors.
//!
//! The daemons describe their config by walking it with a [`Section`]: each typed getter takes
//! the key out of the table (recording a type error if it is the wrong type), and
//! [`Section::finish`] reports whatever keys are left as unknown. Nothing is read from the
//! file system or the network here: a config that parses is then validated as a whole by its
//! owner before any socket is bound.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The full dotted key, empty for problems with the whole file.
    pub key: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems, in the order they were found.
    pub errors: Vec<KeyError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "{}: {n} problem{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            if e.key.is_empty() {
                write!(f, "\n  {}: {}", self.file.display(), e.message)?;
            } else {
                write!(f, "\n  {}: {}: {}", self.file.display(), e.key, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The shared list errors are collected into while a file is walked.
#[derive(Debug, Clone, Default)]
pub struct Errors(Rc<RefCell<Vec<KeyError>>>);

impl Errors {
    /// Records a problem with `key`.
    pub fn push(&self, key: impl Into<String>, message: impl Into<String>) {
        self.0.borrow_mut().push(KeyError { key: key.into(), message: message.into() });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// `Ok(value)` when nothing was recorded, otherwise every problem for `file`.
    pub fn into_result<T>(self, file: &Path, value: T) -> Result<T, ConfigErrors> {
        let errors = self.0.borrow().clone();
        if errors.is_empty() { Ok(value) } else { Err(ConfigErrors { file: file.to_path_buf(), errors }) }
    }
}

/// Reads and parses `path` as TOML. A missing file or a syntax error is returned at once:
/// nothing else can be checked without a parsed document.
pub fn read_toml(path: &Path) -> Result<(Section, Errors), ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![KeyError { key: String::new(), message }],
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read the config file: {}", crate::io_reason(&e))))?;
    parse_toml(&text).map_err(fail)
}

/// Parses TOML text into a root [`Section`].
pub fn parse_toml(text: &str) -> Result<(Section, Errors), String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // toml's message spans several lines with a source excerpt; keep it readable on one.
        format!("not valid TOML: {}", msg.trim().replace('\n', " ").replace("  ", " "))
    })?;
    let errors = Errors::default();
    Ok((Section::new(String::new(), table, errors.clone()), errors))
}

/// A table being read. Getters remove keys; [`Section::finish`] reports the rest as unknown.
#[derive(Debug)]
pub struct Section {
    prefix: String,
    table: toml::Table,
    known: Vec<&'static str>,
    errors: Errors,
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl Section {
    fn new(prefix: String, table: toml::Table, errors: Errors) -> Self {
        Section { prefix, table, known: Vec::new(), errors }
    }

    /// The full key for `key` in this section.
    pub fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_string() } else { format!("{}.{key}", self.prefix) }
    }

    /// Names this section in messages by `label` instead of its position: `services[api]`
    /// rather than `services[1]`, once the entry's name is known.
    pub fn relabel(&mut self, label: &str) {
        if let Some(i) = self.prefix.rfind('[') {
            self.prefix = format!("{}[{label}]", &self.prefix[..i]);
        }
    }

    /// This section's own key (empty for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Records a problem with `key` of this section.
    pub fn error(&self, key: &str, message: impl Into<String>) {
        self.errors.push(self.key(key), message);
    }

    /// The shared error list.
    pub fn errors(&self) -> &Errors {
        &self.errors
    }

    fn take(&mut self, key: &'static str) -> Option<toml::Value> {
        self.known.push(key);
        self.table.remove(key)
    }

    fn wrong_type(&self, key: &str, want: &str, got: &toml::Value) {
        self.error(key, format!("expected {want}, found {}", type_name(got)));
    }

    /// A string value.
    pub fn string(&mut self, key: &'static str) -> Option<String> {
        match self.take(key)? {
            toml::Value::String(s) => Some(s),
            other => {
                self.wrong_type(key, "a string", &other);
                None
            }
        }
    }

    /// A non-empty string value.
    pub fn nonempty_string(&mut self, key: &'static str) -> Option<String> {
        let s = self.string(key)?;
        if s.trim().is_empty() {
            self.error(key, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A string that is required: its absence is recorded as an error.
    pub fn required_string(&mut self, key: &'static str) -> Option<String> {
        let present = self.table.contains_key(key);
        let v = self.nonempty_string(key);
        if !present {
            self.error(key, "is required");
        }
        v
    }

    /// A file system path.
    pub fn path(&mut self, key: &'static str) -> Option<PathBuf> {
        self.nonempty_string(key).map(PathBuf::from)
    }

    /// A required file system path.
    pub fn required_path(&mut self, key: &'static str) -> Option<PathBuf> {
        self.required_string(key).map(PathBuf::from)
    }

    /// A duration written as humantime text: `"500ms"`, `"15s"`, `"5m"`, `"1h 30m"`.
    pub fn duration(&mut self, key: &'static str) -> Option<Duration> {
        let s = self.string(key)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    key,
                    format!("invalid duration \"{s}\": {e}; write for example \"500ms\", \"15s\", \"5m\" or \"1h\""),
                );
                None
            }
        }
    }

    /// A duration within `[min, max]`.
    pub fn duration_in(&mut self, key: &'static str, min: Duration, max: Duration) -> Option<Duration> {
        let d = self.duration(key)?;
        if d < min || d > max {
            self.error(
                key,
                format!(
                    "{} is out of range; use between {} and {}",
                    humantime::format_duration(d),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A size in bytes: an integer, or a string like `"64MiB"`, `"10MB"`, `"512KiB"`.
    pub fn bytes(&mut self, key: &'static str) -> Option<u64> {
        match self.take(key)? {
            toml::Value::Integer(i) if i >= 0 => Some(i as u64),
            toml::Value::String(s) => match parse_bytes(&s) {
                Some(n) => Some(n),
                None => {
                    self.error(
                        key,
                        format!("invalid size \"{s}\"; write for example \"64MiB\", \"10MB\" or a number of bytes"),
                    );
                    None
                }
            },
            other => {
                self.wrong_type(key, "a size such as \"64MiB\"", &other);
                None
            }
        }
    }

    /// A non-negative integer.
    pub fn u64(&mut self, key: &'static str) -> Option<u64> {
        match self.take(key)? {
            toml::Value::Integer(i) if i >= 0 => Some(i as u64),
            toml::Value::Integer(i) => {
                self.error(key, format!("must not be negative, found {i}"));
                None
            }
            other => {
                self.wrong_type(key, "an integer", &other);
                None
            }
        }
    }

    /// A boolean.
    pub fn bool(&mut self, key: &'static str) -> Option<bool> {
        match self.take(key)? {
            toml::Value::Boolean(b) => Some(b),
            other => {
                self.wrong_type(key, "true or false", &other);
                None
            }
        }
    }

    /// A socket address `IP:PORT`.
    pub fn socket_addr(&mut self, key: &'static str) -> Option<SocketAddr> {
        let s = self.string(key)?;
        match s.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    key,
                    format!("invalid address \"{s}\"; write IP:PORT, for example \"0.0.0.0:7443\" or \"[::]:7443\""),
                );
                None
            }
        }
    }

    /// An array of strings.
    pub fn string_list(&mut self, key: &'static str) -> Option<Vec<String>> {
        match self.take(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => self
                            .error(&format!("{key}[{i}]"), format!("expected a string, found {}", type_name(&other))),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong_type(key, "an array of strings", &other);
                None
            }
        }
    }

    /// A table of string values.
    pub fn string_map(&mut self, key: &'static str) -> Option<BTreeMap<String, String>> {
        match self.take(key)? {
            toml::Value::Table(t) => {
                let mut out = BTreeMap::new();
                for (k, v) in t {
                    match v {
                        toml::Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => {
                            self.error(&format!("{key}.{k}"), format!("expected a string, found {}", type_name(&other)))
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.wrong_type(key, "a table of strings", &other);
                None
            }
        }
    }

    /// A sub-table, to be read and finished by the caller.
    pub fn section(&mut self, key: &'static str) -> Option<Section> {
        match self.take(key)? {
            toml::Value::Table(t) => Some(Section::new(self.key(key), t, self.errors.clone())),
            other => {
                self.wrong_type(key, "a table", &other);
                None
            }
        }
    }

    /// An array of tables (`[[key]]`), each to be read and finished by the caller.
    pub fn sections(&mut self, key: &'static str) -> Vec<Section> {
        match self.take(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let k = format!("{}[{i}]", self.key(key));
                    match item {
                        toml::Value::Table(t) => out.push(Section::new(k, t, self.errors.clone())),
                        other => self.errors.push(k, format!("expected a table, found {}", type_name(&other))),
                    }
                }
                out
            }
            Some(other) => {
                self.wrong_type(key, "an array of tables ([[...]])", &other);
                Vec::new()
            }
        }
    }

    /// Whether the key is present (without consuming it).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Reports every key not read as unknown, naming the keys that are allowed here.
    pub fn finish(self) {
        let mut known = self.known.clone();
        known.sort_unstable();
        known.dedup();
        for key in self.table.keys() {
            let hint = if known.is_empty() {
                "this table takes no keys".to_string()
            } else {
                format!("known keys here: {}", known.join(", "))
            };
            self.errors.push(self.key(key), format!("unknown key; {hint}"));
        }
    }
}

/// Parses `"64MiB"`, `"10 MB"`, `"512k"`, `"1GiB"` or `"1234"` into bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_full_keys() {
        let (mut root, errors) = parse_toml(
            r#"
            name = 3
            bogus = "x"
            [tls]
            ca = ""
            extra = 1
            [[services]]
            name = "a"
            wait = "soon"
            "#,
        )
        .unwrap();
        assert_eq!(root.string("name"), None);
        let mut tls = root.section("tls").unwrap();
        assert_eq!(tls.path("ca"), None);
        tls.finish();
        for mut s in root.sections("services") {
            s.string("name");
            s.duration("wait");
            s.finish();
        }
        root.finish();
        let err = errors.into_result(Path::new("a.toml"), ()).unwrap_err();
        let keys: Vec<_> = err.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["name", "tls.ca", "tls.extra", "services[0].wait", "bogus"]);
        let text = err.to_string();
        assert!(text.contains("a.toml: tls.extra: unknown key; known keys here: ca"), "{text}");
        assert!(text.contains("invalid duration \"soon\""), "{text}");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("10 MB"), Some(10_000_000));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("1.5GiB"), None);
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let msg = parse_toml("a = ").unwrap_err();
        assert!(msg.starts_with("not valid TOML"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
