//! The module graph of `src/` has no loops, at the top (protocol, store,
//! broker, connection, mgmt, config, tls, ...) and inside `src/broker/`.
//!
//! Inside `src/broker/`: for the direct
//! submodules of `broker` (exchange, queue, vhost, super_stream, ...), an
//! edge A -> B means some file under A names `crate::broker::B` (or reaches
//! B through `super::`). A child using its parent's items is fine; two
//! submodules using each other, directly or through others, is a loop.
//!
//! Reads the sources as text (formatted by rustfmt): paths in `//`
//! comments are ignored, and `super::` inside an inline `mod name { .. }`
//! (e.g. `mod tests`) counts one level deeper.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn top_level_modules_do_not_import_each_other_in_a_loop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&root, "crate::");
    for (from, to) in &graph {
        println!(
            "{from} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import loop in src/: {}", cycle.join(" -> "));
    }
}

#[test]
fn broker_submodules_do_not_import_each_other_in_a_loop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/broker");
    let graph = module_graph(&root, "crate::broker::");
    for (from, to) in &graph {
        println!(
            "{from} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import loop in src/broker/: {}", cycle.join(" -> "));
    }
}

/// Edges between the direct submodules of the module at `root` (named
/// `prefix` from the crate), from every `.rs` file.
fn module_graph(root: &Path, prefix: &str) -> Graph {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    // broker's direct submodules: `x.rs` or `x/` in src/broker/.
    let children: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(root, f).first().cloned())
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let module = module_path(root, file);
        let Some(from) = module.first() else {
            continue; // the module itself: a parent may use its children
        };
        let text = std::fs::read_to_string(file).unwrap();
        for to in referenced_children(&text, &module, prefix) {
            if &to != from && children.contains(&to) {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `queue/stream/reader.rs` -> [queue, stream, reader]; `queue/mod.rs` ->
/// [queue]; `mod.rs` -> [].
fn module_path(root: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    // The crate's roots are its top module.
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.pop();
    }
    parts
}

/// The broker submodules a file's paths name: `crate::broker::X` and
/// `super::...::X` that climbs up to the module at the root (`broker`, or the crate).
fn referenced_children(text: &str, module: &[String], prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    // Indentations of the inline `mod name {` blocks we are in.
    let mut inline_mods: Vec<usize> = Vec::new();
    for line in logical_lines(text) {
        let indent = line.len() - line.trim_start().len();
        if inline_mods.last() == Some(&indent) && line.trim() == "}" {
            inline_mods.pop();
            continue;
        }
        for rest in line.split(prefix).skip(1) {
            found.extend(heads(rest));
        }
        for (i, _) in line.match_indices("super::") {
            if line[..i].ends_with("super::") {
                continue; // counted from the first `super::` of the chain
            }
            let mut rest = &line[i..];
            let mut ups = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                ups += 1;
                rest = r;
            }
            // This line's module: the file's, plus the inline modules.
            if ups == module.len() + inline_mods.len() {
                found.extend(heads(rest)); // climbed up to `broker`
            }
        }
        let item = line.trim_start();
        let item = item.strip_prefix("pub(crate) ").unwrap_or(item);
        let item = item.strip_prefix("pub ").unwrap_or(item);
        if item.starts_with("mod ") && item.trim_end().ends_with('{') {
            inline_mods.push(indent);
        }
    }
    found
}

/// The lines without `//` comments, a `use` spread over several lines
/// joined into one.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut open_use = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap();
        if open_use {
            lines.last_mut().unwrap().push_str(code.trim());
        } else {
            lines.push(code.to_string());
            let item = code.trim_start();
            open_use = item.starts_with("use ") || item.starts_with("pub use ");
        }
        open_use &= !code.contains(';');
    }
    lines
}

/// The first segments a path continues with: `queue::Queue` -> [queue],
/// `{queue::Queue, vhost}` -> [queue, vhost].
fn heads(rest: &str) -> Vec<String> {
    let Some(list) = rest.strip_prefix('{') else {
        return vec![leading_ident(rest)];
    };
    let (mut depth, mut items, mut item_start) = (0, Vec::new(), 0);
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(leading_ident(list[item_start..i].trim()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(leading_ident(list[item_start..i].trim()));
                item_start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn leading_ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A loop in the graph, as its module names (first repeated at the end).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}
