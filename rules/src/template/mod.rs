//! Alert label and annotation templates: the part of Go's text/template that Prometheus
//! alerting rules use, parsed once into a syntax tree and rendered per alert, byte for byte
//! as Prometheus would (Go 1.19's text/template and fmt, and Prometheus' template.go as of
//! v2.42 with its `missingkey=zero` option and its prelude
//! `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}`).
//!
//! Supported: text, comments, `{{-`/`-}}` trimming; `if`/`else if`/`else`, `with`/`else
//! with`/`else`, `range` over maps (in key order) and query results with `$k, $v :=`,
//! `break`, `continue`; variables with `:=` and `=` and Go's scoping; pipelines,
//! parenthesised pipelines, field chains; string, raw string, number, character, boolean and
//! `nil` literals; Go's builtins (`and or not len index slice print printf println eq ne lt
//! le gt ge html js urlquery`) and all of Prometheus' functions except `tmpl` (console
//! templates only). Refused when parsed, with a message naming them: `define`, `template`,
//! `block`, `call`, complex numbers, and the few Go time methods fleet lacks (`In`, `Local`,
//! `Location`, `AppendFormat` and the marshalling methods).
//!
//! Known differences from Go: `unicode.IsPrint` (for `%q` and `js`) is approximated; query
//! results printed whole show their samples where Go shows pointer addresses; strings are
//! UTF-8, so a `slice` through a character or a `\x` escape that is not UTF-8 yields U+FFFD
//! where Go keeps the raw bytes.

mod exec;
mod funcs;
mod gofmt;
mod goregex;
mod gotime;
mod lex;
mod parse;
mod strconv;
mod value;

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

pub use gofmt::go_float;

/// `s` as Go's `%q` writes it (how promtool names an expression in its output).
pub fn go_quote(s: &str) -> String {
    strconv::quote(s)
}

/// The deepest nesting of blocks and parentheses a template may have.
pub const MAX_NESTING: usize = 100;
/// The most output one render may produce, and the longest string it may build.
pub const MAX_OUTPUT: usize = 1 << 20;
/// The most evaluation steps (nodes walked, commands run) one render may take.
pub const MAX_STEPS: usize = 1_000_000;
/// The most `query` calls one render may make.
pub const MAX_QUERIES: usize = 100;

/// Runs the PromQL queries of a template's `query` function, at the alert's evaluation time.
pub trait Querier {
    fn query(&self, expr: &str) -> Result<Vec<QuerySample>, String>;
}

/// One series of a query result.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What a template sees.
#[derive(Clone, Default)]
pub struct Data<'a> {
    /// The alert's labels (`$labels`, `.Labels`).
    pub labels: BTreeMap<String, String>,
    /// The alert's value (`$value`, `.Value`).
    pub value: f64,
    /// External labels (`$externalLabels`, `.ExternalLabels`).
    pub external_labels: BTreeMap<String, String>,
    /// The external URL (`$externalURL`, `.ExternalURL`, `externalURL`, `pathPrefix`).
    pub external_url: String,
    /// The evaluation time in seconds since the Unix epoch, which `now` returns.
    pub timestamp: f64,
    /// Runs `query`; without one, `query` fails with "query is not available here".
    pub querier: Option<&'a dyn Querier>,
}

impl std::fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("labels", &self.labels)
            .field("value", &self.value)
            .field("external_labels", &self.external_labels)
            .field("external_url", &self.external_url)
            .field("timestamp", &self.timestamp)
            .field("querier", &self.querier.map(|_| "..."))
            .finish()
    }
}

/// A parsed template, checked and ready to render any number of times.
#[derive(Debug)]
pub struct Template {
    source: String,
    nodes: Vec<parse::Node>,
    regexes: HashMap<String, Regex>,
}

impl Template {
    /// Parses and checks `text`; the error names the construct and where it is
    /// ("1:12: function \"humanise\" not defined").
    pub fn parse(text: &str) -> Result<Template, String> {
        let parsed = parse::parse(text)?;
        Ok(Template { source: text.to_string(), nodes: parsed.nodes, regexes: parsed.regexes })
    }

    /// Renders the template with `data`.
    pub fn render(&self, data: &Data<'_>) -> Result<String, String> {
        exec::render(&self.source, &self.nodes, &self.regexes, data)
    }
}

/// Checks `text` as fleet checks a rule file's templates when it loads: everything that can
/// be known without data, so that a template which passes renders or fails only on its data.
pub fn check(text: &str) -> Result<(), String> {
    Template::parse(text).map(|_| ())
}

/// Parses and renders `text` once.
pub fn expand(text: &str, data: &Data<'_>) -> Result<String, String> {
    Template::parse(text)?.render(data)
}

#[cfg(test)]
mod tests;
