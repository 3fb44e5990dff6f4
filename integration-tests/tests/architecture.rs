//! docs/ARCHITECTURE.md stays a true map: its code map names every module of every crate (in
//! that crate's section), each invariant names the test that checks it, and nothing in the
//! repository points at documents outside it.

use std::path::{Path, PathBuf};

use fleet_integration_tests::source_files;

/// The crates, as the code map's section headings name them (`### \`coordinator/\``).
const CRATES: [&str; 8] = ["proto", "common", "rules", "agent", "coordinator", "cli", "loadgen", "integration-tests"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text of the code map section of `krate`.
fn section<'a>(doc: &'a str, krate: &str) -> &'a str {
    let heading = format!("### `{krate}/`");
    let start = doc.find(&heading).unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no section {heading}"));
    let rest = &doc[start + heading.len()..];
    &rest[..rest.find("\n### ").or_else(|| rest.find("\n## ")).unwrap_or(rest.len())]
}

#[test]
fn the_code_map_names_every_module_of_every_crate() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for krate in CRATES {
        let text = section(&doc, krate);
        let mut rs = Vec::new();
        for dir in ["src", "benches", "tests"] {
            if krate == "integration-tests" || dir != "tests" {
                rs.extend(source_files(&root().join(krate).join(dir), &[".rs"]));
            }
        }
        for f in rs {
            let rel = f.strip_prefix(root().join(krate)).unwrap();
            let in_dir = rel.iter().skip(1).map(|c| c.to_string_lossy().into_owned()).collect::<Vec<_>>();
            let name = in_dir.last().unwrap().clone();
            // `store/shared.rs`, or `shared.rs` in a section that names `store/`.
            let full = format!("`{}`", in_dir.join("/"));
            let parent_named =
                in_dir.len() == 1 || text.contains(&format!("`{}/`", in_dir[..in_dir.len() - 1].join("/")));
            let with_dir = format!("`{}`", rel.to_string_lossy());
            if !(text.contains(&full)
                || text.contains(&with_dir)
                || (parent_named && text.contains(&format!("`{name}`"))))
            {
                missing.push(format!("{krate}/{}", rel.display()));
            }
        }
    }
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md's code map does not name: {missing:?}");
}

#[test]
fn every_invariant_names_the_test_that_checks_it() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc.find("## Invariants").expect("an Invariants section");
    let rest = &doc[start..];
    let section = &rest[..rest[3..].find("\n## ").map(|i| i + 3).unwrap_or(rest.len())];
    let mut items: Vec<String> = Vec::new();
    for line in section.lines() {
        let t = line.trim_start();
        let numbered = t.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered {
            items.push(String::new());
        }
        if let Some(item) = items.last_mut() {
            item.push_str(line);
            item.push('\n');
        }
    }
    assert!(items.len() >= 10, "found {} invariants", items.len());
    for item in &items {
        assert!(item.contains(".rs"), "this invariant names no test:\n{item}");
    }
}

#[test]
fn nothing_points_at_documents_outside_the_repository() {
    // Spelled in two halves so that this file does not match itself.
    let needles = [concat!("DESI", "GN §"), concat!("../sha", "red")];
    let all = source_files(&root(), &[".rs", ".md", ".proto", ".toml", ".sh", ".py", ".yml", ".yaml"]);
    let mut found = Vec::new();
    for f in all {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for (i, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n)) {
                found.push(format!("{}:{}: {}", f.strip_prefix(root()).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "references to documents outside the repository:\n{}", found.join("\n"));
}
