//! Cycles and depth in the prerequisite and segment graphs.

use std::collections::BTreeMap;

use super::Problem;

/// A reference from one node to another, with the path of the referencing value.
pub(super) struct Edge<'a> {
    pub(super) to: &'a str,
    pub(super) path: String,
}

#[derive(Clone, Copy)]
enum Mark {
    New,
    Open,
    Done(usize),
}

/// Reports every cycle (at the path of the edge that closes it) and every node whose longest
/// chain is deeper than `max_depth`. `what` names the relation ("prerequisite", "segment"),
/// `prefix` the nodes' map ("flags", "segments"). Edges to unknown nodes are skipped: they are
/// reported as unknown references elsewhere. Iterative, so a long chain cannot exhaust the stack.
pub(super) fn check(
    what: &str,
    prefix: &str,
    graph: &BTreeMap<&str, Vec<Edge<'_>>>,
    max_depth: usize,
    problems: &mut Vec<Problem>,
) {
    let mut marks: BTreeMap<&str, Mark> = graph.keys().map(|k| (*k, Mark::New)).collect();
    for &start in graph.keys() {
        if !matches!(marks.get(start), Some(Mark::New)) {
            continue;
        }
        marks.insert(start, Mark::Open);
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some((node, next)) = stack.last_mut() {
            let node: &str = node;
            let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(edge) = edges.get(*next) {
                *next += 1;
                match marks.get(edge.to) {
                    Some(Mark::New) => {
                        marks.insert(edge.to, Mark::Open);
                        stack.push((edge.to, 0));
                    }
                    Some(Mark::Open) => {
                        let from = stack.iter().position(|(n, _)| *n == edge.to).unwrap_or(0);
                        let mut names: Vec<&str> = stack
                            .get(from..)
                            .unwrap_or(&[])
                            .iter()
                            .map(|(n, _)| *n)
                            .collect();
                        names.push(edge.to);
                        problems.push(Problem::new(
                            edge.path.clone(),
                            format!(
                                "{what} cycle {}; remove one of these references",
                                names.join(" → ")
                            ),
                        ));
                    }
                    Some(Mark::Done(_)) | None => {}
                }
            } else {
                let depth = 1 + edges
                    .iter()
                    .filter_map(|e| match marks.get(e.to) {
                        Some(Mark::Done(d)) => Some(*d),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                marks.insert(node, Mark::Done(depth));
                if depth == max_depth + 1 {
                    problems.push(Problem::new(
                        format!("{prefix}.{node}"),
                        format!(
                            "{what} chain deeper than {max_depth} levels; flatten it (evaluation recurses along it)"
                        ),
                    ));
                }
                stack.pop();
            }
        }
    }
}
