//! No two modules of a crate import each other, directly or round a longer circle: the modules
//! of each crate form layers, so that a module can be read, tested and changed knowing only the
//! ones below it (docs/ARCHITECTURE.md). This reads every `crate::`, `super::` and `self::` path
//! in the workspace's sources, code only (comments and literals skipped), tests included, and
//! fails on any circle among the modules that share a parent.
//!
//! `KNOWN` lists the circles that are still being taken apart; a circle that is not in it fails
//! the test, and so does one in it that is gone (take it off the list).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// (crate directory, the modules of one circle, sorted).
const KNOWN: &[(&str, &[&str])] = &[];

const CRATES: &[&str] = &["proto", "common", "rules", "agent", "coordinator", "cli", "loadgen", "integration-tests"];

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = BTreeMap::new();
    for krate in CRATES {
        for (members, edges) in circles(&root.join(krate).join("src")) {
            found.insert((krate.to_string(), members), edges);
        }
    }
    let known: BTreeSet<(String, Vec<String>)> =
        KNOWN.iter().map(|(k, m)| (k.to_string(), m.iter().map(|s| s.to_string()).collect())).collect();
    let mut problems = Vec::new();
    for ((krate, members), edges) in &found {
        if !known.contains(&(krate.clone(), members.clone())) {
            problems.push(format!(
                "{krate}: the modules {} import each other:\n    {}",
                members.join(", "),
                edges.join("\n    ")
            ));
        }
    }
    for (krate, members) in &known {
        if !found.contains_key(&(krate.clone(), members.clone())) {
            problems.push(format!("{krate}: {} no longer form a circle; take them off KNOWN", members.join(", ")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The circles among sibling modules under `src`: each as its members (module paths joined
/// with ::, sorted) and one import of each edge in it, as file:line.
fn circles(src: &Path) -> Vec<(Vec<String>, Vec<String>)> {
    let files = fleet_integration_tests::source_files(src, &[".rs"]);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    // Edges between siblings: (parent, from child, to child) -> where.
    let mut edges: BTreeMap<(Vec<String>, String, String), String> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let from = module_of(src, file);
        for (path, line) in references(&code_only(&text), &from) {
            let to = known_prefix(&modules, &path);
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < from.len() && common < to.len() {
                let at = format!("{}:{line}", file.strip_prefix(src.parent().unwrap()).unwrap().display());
                edges.entry((from[..common].to_vec(), from[common].clone(), to[common].clone())).or_insert(at);
            }
        }
    }
    let mut by_parent: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, a, b) in edges.keys() {
        by_parent.entry(parent.clone()).or_default().entry(a.clone()).or_default().insert(b.clone());
    }
    let mut out = Vec::new();
    for (parent, graph) in by_parent {
        for scc in strongly_connected(&graph) {
            let name = |m: &String| parent.iter().chain([m]).cloned().collect::<Vec<_>>().join("::");
            let mut where_ = Vec::new();
            for a in &scc {
                for b in &scc {
                    if let Some(at) = edges.get(&(parent.clone(), a.clone(), b.clone())) {
                        where_.push(format!("{} -> {} ({at})", name(a), name(b)));
                    }
                }
            }
            out.push((scc.iter().map(name).collect(), where_));
        }
    }
    out
}

/// The module a file is: `a/b.rs` and `a/b/mod.rs` are `[a, b]`; `lib.rs` and `main.rs` the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") || (parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main")) {
        parts.pop();
    }
    parts
}

/// The longest prefix of `path` that is a module with a file.
fn known_prefix(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
}

/// `text` with comments, strings and character literals blanked (newlines kept).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    // Skips c[from..to], keeping its newlines.
    let blank = |out: &mut String, from: usize, to: usize| {
        out.extend(c[from..to.min(c.len())].iter().filter(|ch| **ch == '\n'));
    };
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            let end = c[i..].iter().position(|ch| *ch == '\n').map_or(c.len(), |p| i + p);
            i = end;
        } else if c[i] == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 1;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == 'r' && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2])))) && {
            let hashes = c[i + 1..].iter().take_while(|ch| **ch == '#').count();
            c.get(i + 1 + hashes) == Some(&'"')
        } {
            let hashes = c[i + 1..].iter().take_while(|ch| **ch == '#').count();
            let mut j = i + 2 + hashes;
            while j < c.len()
                && !(c[j] == '"' && c[j + 1..].iter().take(hashes).filter(|ch| **ch == '#').count() == hashes)
            {
                j += 1;
            }
            let end = j + 1 + hashes;
            blank(&mut out, i, end);
            i = end;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c[i] == '\'' && next == Some('\\') {
            let end = c[i + 2..].iter().position(|ch| *ch == '\'').map_or(c.len(), |p| i + 3 + p);
            i = end;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Every module path named in `code` (of the module `here`), resolved to an absolute path,
/// with its line. Inline modules (`mod tests { ... }`) are followed so that their `super::`
/// means the file's module.
fn references(code: &str, here: &[String]) -> Vec<(Vec<String>, usize)> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    // The inline modules open at this point: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let (tok, line) = &tokens[i];
        match tok.as_str() {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if tokens.get(i + 2).is_some_and(|(t, _)| t == "{") => {
                inline.push((tokens[i + 1].0.clone(), depth + 1));
            }
            "crate" | "super" | "self"
                if tokens.get(i + 1).is_some_and(|(t, _)| t == "::")
                    && (i == 0 || tokens[i - 1].0 != "$" && tokens[i - 1].0 != "::") =>
            {
                let mut base: Vec<String> = here.iter().cloned().chain(inline.iter().map(|(n, _)| n.clone())).collect();
                let mut j = i;
                let mut start = true;
                loop {
                    match tokens.get(j).map(|(t, _)| t.as_str()) {
                        Some("crate") if start => base.clear(),
                        Some("super") => {
                            base.pop();
                        }
                        Some("self") if start => {}
                        _ => break,
                    }
                    start = false;
                    if tokens.get(j + 1).is_some_and(|(t, _)| t == "::") {
                        j += 2;
                    } else {
                        break;
                    }
                }
                let (paths, end) = path_tree(&tokens, j, base);
                out.extend(paths.into_iter().map(|p| (p, *line)));
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Paths from tokens[at]: `a::b::C`, or a group `{a::b, c::{d, e}}`, each prefixed by `base`.
/// Returns the paths and the index after them.
fn path_tree(tokens: &[(String, usize)], at: usize, base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = base;
    let mut j = at;
    loop {
        match tokens.get(j).map(|(t, _)| t.as_str()) {
            Some("{") => {
                let mut all = Vec::new();
                j += 1;
                while j < tokens.len() && tokens[j].0 != "}" {
                    let (paths, end) = path_tree(tokens, j, path.clone());
                    all.extend(paths);
                    j = end;
                    // Past the separator (or whatever `as name` left).
                    if tokens.get(j).is_some_and(|(t, _)| t != "}") {
                        j += 1;
                    }
                }
                return (all, j + 1);
            }
            Some(t) if t.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') => {
                path.push(t.to_string());
                if tokens.get(j + 1).is_some_and(|(t, _)| t == "::") {
                    j += 2;
                } else {
                    return (vec![path], j + 1);
                }
            }
            _ => return (vec![path], j),
        }
    }
}

/// Identifiers, `::` and single punctuation, each with its line.
fn tokenize(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let c: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((c[start..i].iter().collect(), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(("::".into(), line));
            i += 2;
        } else {
            out.push((ch.to_string(), line));
            i += 1;
        }
    }
    out
}

/// Tarjan's strongly connected components of more than one node.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_reader_sees_paths_and_skips_comments_and_literals() {
    let code = code_only(
        "use crate::{a::X, b::{self, Y}};\n// crate::c::Z\nlet s = \"crate::d\"; let r = r#\"crate::e\"#; let ch = '\"';\nfn f<'a>() { crate::g::h(); }\nmod tests { use super::*; use super::super::k; }\n",
    );
    let refs: Vec<(String, usize)> =
        references(&code, &["m".to_string()]).into_iter().map(|(p, l)| (p.join("::"), l)).collect();
    assert_eq!(
        refs,
        vec![
            ("a::X".to_string(), 1),
            ("b::self".to_string(), 1),
            ("b::Y".to_string(), 1),
            ("g::h".to_string(), 4),
            ("m".to_string(), 5),
            ("k".to_string(), 5),
        ]
    );
}
