//! The resource graph: a petgraph DAG built from references and `depends_on`,
//! cycle detection that names the cycle, DOT and Mermaid output, and the
//! parallel walker that apply and destroy use (each node starts as soon as
//! everything it depends on has finished, at most `parallelism` at a time).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{FuturesUnordered, StreamExt};
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

/// Edges point from a dependency to its dependent (vpc -> subnet).
#[derive(Debug, Clone)]
pub struct ResourceGraph {
    pub graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
}

#[derive(Debug, Clone)]
pub struct Cycle {
    /// The addresses on the cycle, each depending on the next.
    pub members: Vec<String>,
}

impl Cycle {
    pub fn describe(&self) -> String {
        let mut s = self.members.join(" -> ");
        if let Some(first) = self.members.first() {
            s.push_str(" -> ");
            s.push_str(first);
        }
        s.push_str(" (each depends on the next)");
        s
    }
}

impl ResourceGraph {
    /// `deps[a]` lists what `a` depends on. Unknown names are ignored.
    pub fn from_dependencies(deps: &BTreeMap<String, Vec<String>>) -> Result<ResourceGraph, Cycle> {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for a in deps.keys() {
            index.insert(a.clone(), graph.add_node(a.clone()));
        }
        for (a, ds) in deps {
            for d in ds {
                if let (Some(&from), Some(&to)) = (index.get(d), index.get(a)) {
                    graph.update_edge(from, to, ());
                }
            }
        }
        let g = ResourceGraph { graph, index };
        if let Some(cycle) = g.find_cycle() {
            return Err(cycle);
        }
        Ok(g)
    }

    fn find_cycle(&self) -> Option<Cycle> {
        for scc in tarjan_scc(&self.graph) {
            let self_loop = scc.len() == 1 && self.graph.contains_edge(scc[0], scc[0]);
            if scc.len() > 1 || self_loop {
                // Order the members along the cycle, starting from the smallest name.
                let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
                let start = *scc.iter().min_by_key(|n| &self.graph[**n])?;
                let mut order = vec![start];
                let mut cur = start;
                while order.len() < members.len() {
                    let next = self
                        .graph
                        .neighbors_directed(cur, Direction::Incoming)
                        .filter(|n| members.contains(n) && !order.contains(n))
                        .min_by_key(|n| &self.graph[*n])?;
                    order.push(next);
                    cur = next;
                }
                return Some(Cycle {
                    members: order.into_iter().map(|n| self.graph[n].clone()).collect(),
                });
            }
        }
        None
    }

    /// Addresses in an order where dependencies come first.
    pub fn topological(&self) -> Vec<String> {
        toposort(&self.graph, None)
            .map(|v| v.into_iter().map(|n| self.graph[n].clone()).collect())
            .unwrap_or_default()
    }

    pub fn dependencies_of(&self, address: &str) -> Vec<String> {
        self.neighbors(address, Direction::Incoming)
    }

    pub fn dependents_of(&self, address: &str) -> Vec<String> {
        self.neighbors(address, Direction::Outgoing)
    }

    /// `address` and everything that depends on it, directly or not.
    pub fn with_all_dependents(&self, address: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some(&start) = self.index.get(address) else {
            return out;
        };
        let mut walk = petgraph::visit::Dfs::new(&self.graph, start);
        while let Some(n) = walk.next(&self.graph) {
            out.insert(self.graph[n].clone());
        }
        out
    }

    fn neighbors(&self, address: &str, dir: Direction) -> Vec<String> {
        let Some(&n) = self.index.get(address) else {
            return Vec::new();
        };
        let mut v: Vec<String> = self
            .graph
            .neighbors_directed(n, dir)
            .map(|m| self.graph[m].clone())
            .collect();
        v.sort();
        v
    }

    /// DOT; with `actions` (address -> planned action: create, update,
    /// replace, delete, no_op), nodes are filled by what the plan does.
    pub fn to_dot(&self, kinds: &BTreeMap<String, String>) -> String {
        self.to_dot_with(kinds, &BTreeMap::new())
    }

    pub fn to_dot_with(
        &self,
        kinds: &BTreeMap<String, String>,
        actions: &BTreeMap<String, String>,
    ) -> String {
        let mut s = String::from("digraph stack {\n  rankdir=LR;\n  node [shape=box];\n");
        let mut nodes: Vec<&String> = self.index.keys().collect();
        nodes.sort();
        // A component use's resources are drawn inside a box of their own.
        let mut groups: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for n in nodes {
            let group = n.rfind('.').map(|i| &n[..i]).unwrap_or("");
            groups.entry(group).or_default().push(n);
        }
        for (i, (group, members)) in groups.iter().enumerate() {
            let indent = if group.is_empty() { "  " } else { "    " };
            if !group.is_empty() {
                s.push_str(&format!(
                    "  subgraph cluster_{i} {{\n    label=\"{}\";\n",
                    dot_escape(group)
                ));
            }
            for n in members {
                let kind = kinds.get(*n).map(String::as_str).unwrap_or("");
                let id = dot_escape(n);
                let (mark, fill) = action_style(actions.get(*n).map(String::as_str));
                let style = fill
                    .map(|f| format!(", style=filled, fillcolor=\"{f}\""))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "{indent}\"{id}\" [label=\"{mark}{id}\\n{kind}\"{style}];\n"
                ));
            }
            if !group.is_empty() {
                s.push_str("  }\n");
            }
        }
        for e in self.sorted_edges() {
            s.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                dot_escape(&e.0),
                dot_escape(&e.1)
            ));
        }
        s.push_str("}\n");
        s
    }

    pub fn to_mermaid(&self, kinds: &BTreeMap<String, String>) -> String {
        self.to_mermaid_with(kinds, &BTreeMap::new())
    }

    pub fn to_mermaid_with(
        &self,
        kinds: &BTreeMap<String, String>,
        actions: &BTreeMap<String, String>,
    ) -> String {
        let mut s = String::from("graph LR\n");
        let mut nodes: Vec<&String> = self.index.keys().collect();
        nodes.sort();
        let mut classes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for n in nodes {
            let kind = kinds.get(n).map(String::as_str).unwrap_or("");
            let label = n.replace('"', "#quot;");
            let action = actions.get(n).map(String::as_str);
            let (mark, fill) = action_style(action);
            s.push_str(&format!(
                "  {}[\"{mark}{label}<br/>{kind}\"]\n",
                mermaid_id(n)
            ));
            if let (Some(a), Some(_)) = (action, fill) {
                classes.entry(a).or_default().push(mermaid_id(n));
            }
        }
        for (a, b) in self.sorted_edges() {
            s.push_str(&format!("  {} --> {}\n", mermaid_id(&a), mermaid_id(&b)));
        }
        for (action, ids) in classes {
            let (_, fill) = action_style(Some(action));
            s.push_str(&format!(
                "  classDef {action} fill:{}\n",
                fill.unwrap_or("#ffffff")
            ));
            s.push_str(&format!("  class {} {action}\n", ids.join(",")));
        }
        s
    }

    fn sorted_edges(&self) -> Vec<(String, String)> {
        let mut edges: Vec<(String, String)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (self.graph[a].clone(), self.graph[b].clone()))
            .collect();
        edges.sort();
        edges
    }
}

/// A node id mermaid accepts: `private["a"]` becomes `private__a`,
/// `app.db` becomes `app_db`.
fn mermaid_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .replace("___", "__")
}

/// A planned action's mark before the node's name and its fill colour.
fn action_style(action: Option<&str>) -> (&'static str, Option<&'static str>) {
    match action {
        Some("create") => ("+ ", Some("#c8f0c8")),
        Some("update") => ("~ ", Some("#f5e6a8")),
        Some("replace") => ("-/+ ", Some("#f5c08a")),
        Some("delete") => ("- ", Some("#f0a8a8")),
        _ => ("", None),
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// What happened to one node of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(String),
    /// Not run because a node it depends on failed or was not run.
    Skipped {
        because: String,
    },
    /// Not run because the walk was interrupted.
    NotStarted,
}

/// Runs `run` once per node of `deps` (node -> the nodes it waits for), each
/// as soon as all its prerequisites are `Done`, at most `parallelism` at once.
/// A failure skips everything that (transitively) waits for the failed node;
/// independent branches go on. Once `stop` is set, nothing new is started.
pub async fn walk<F, Fut>(
    deps: &BTreeMap<String, Vec<String>>,
    parallelism: usize,
    stop: &AtomicBool,
    run: F,
) -> BTreeMap<String, Outcome>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    walk_prioritized(
        deps,
        &BTreeMap::new(),
        &BTreeSet::new(),
        parallelism,
        stop,
        run,
    )
    .await
}

/// The expected time from each node to the end of the graph: its own
/// `cost` plus the longest chain of costs among the nodes that wait for it.
pub fn remaining_cost(
    deps: &BTreeMap<String, Vec<String>>,
    cost: &dyn Fn(&str) -> u64,
) -> BTreeMap<String, u64> {
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, ds) in deps {
        for d in ds.iter().filter(|d| deps.contains_key(*d)) {
            dependents.entry(d.as_str()).or_default().push(node);
        }
    }
    fn visit<'a>(
        n: &'a str,
        dependents: &BTreeMap<&'a str, Vec<&'a str>>,
        cost: &dyn Fn(&str) -> u64,
        memo: &mut BTreeMap<&'a str, u64>,
        depth: usize,
    ) -> u64 {
        if let Some(v) = memo.get(n) {
            return *v;
        }
        let below = if depth > 10_000 {
            0
        } else {
            dependents
                .get(n)
                .into_iter()
                .flatten()
                .map(|d| visit(d, dependents, cost, memo, depth + 1))
                .max()
                .unwrap_or(0)
        };
        let v = cost(n) + below;
        memo.insert(n, v);
        v
    }
    let mut memo = BTreeMap::new();
    for n in deps.keys() {
        visit(n, &dependents, cost, &mut memo, 0);
    }
    memo.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Like [`walk`], but when more nodes are ready than may run, the one with
/// the highest `priority` starts first (ties in name order). With priority =
/// the expected time from the node to the end of the graph, the critical
/// path is never kept waiting behind quick side branches.
///
/// And while the longest chain is in its `quick` setup (a VPC, subnets,
/// security groups in front of a 20-minute database), nodes whose chains
/// are less than half as long wait: they have the time to spare, and the
/// service answers the chain's requests sooner without them.
pub async fn walk_prioritized<F, Fut>(
    deps: &BTreeMap<String, Vec<String>>,
    priority: &BTreeMap<String, u64>,
    quick: &BTreeSet<String>,
    parallelism: usize,
    stop: &AtomicBool,
    run: F,
) -> BTreeMap<String, Outcome>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let parallelism = parallelism.max(1);
    let mut waiting_on: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, ds) in deps {
        let ds: BTreeSet<&str> = ds
            .iter()
            .map(String::as_str)
            .filter(|d| deps.contains_key(*d) && *d != node)
            .collect();
        waiting_on.insert(node, ds.len());
        for d in ds {
            dependents.entry(d).or_default().push(node);
        }
    }
    use std::cmp::Reverse;
    let prio = |n: &str| priority.get(n).copied().unwrap_or(0);
    let mut ready: std::collections::BinaryHeap<(u64, Reverse<&str>)> = waiting_on
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| (prio(k), Reverse(*k)))
        .collect();
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut in_flight = FuturesUnordered::new();
    let mut running: BTreeSet<&str> = BTreeSet::new();

    loop {
        while in_flight.len() < parallelism && !stop.load(Ordering::SeqCst) {
            let Some(&(p, Reverse(node))) = ready.peek() else {
                break;
            };
            let top = running.iter().map(|n| prio(n)).max().unwrap_or(0).max(p);
            let in_setup = running
                .iter()
                .any(|n| quick.contains(*n) && prio(n).saturating_mul(10) >= top.saturating_mul(9));
            if in_setup && p.saturating_mul(2) < top {
                break;
            }
            ready.pop();
            running.insert(node);
            let fut = run(node.to_string());
            in_flight.push(async move { (node, fut.await) });
        }
        let Some((node, result)) = in_flight.next().await else {
            break;
        };
        running.remove(node);
        match result {
            Ok(()) => {
                outcomes.insert(node.to_string(), Outcome::Done);
                for dep in dependents.get(node).into_iter().flatten() {
                    if outcomes.contains_key(*dep) {
                        continue;
                    }
                    let n = waiting_on.entry(dep).or_default();
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        ready.push((prio(dep), Reverse(dep)));
                    }
                }
            }
            Err(e) => {
                outcomes.insert(node.to_string(), Outcome::Failed(e));
                let mut stack = vec![node];
                while let Some(n) = stack.pop() {
                    for dep in dependents.get(n).into_iter().flatten() {
                        if !outcomes.contains_key(*dep) {
                            outcomes.insert(
                                dep.to_string(),
                                Outcome::Skipped {
                                    because: node.to_string(),
                                },
                            );
                            stack.push(dep);
                        }
                    }
                }
            }
        }
    }
    for node in deps.keys() {
        outcomes.entry(node.clone()).or_insert(Outcome::NotStarted);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(a, ds)| (a.to_string(), ds.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn all_dependents_follow_the_edges_transitively_and_no_further() {
        let g = ResourceGraph::from_dependencies(&deps(&[
            ("db", &[]),
            ("role", &["db"]),
            ("app", &["role"]),
            ("cache", &[]),
        ]))
        .unwrap();
        let got: Vec<String> = g.with_all_dependents("db").into_iter().collect();
        assert_eq!(got, ["app", "db", "role"]);
        assert!(g.with_all_dependents("nothing").is_empty());
    }

    #[test]
    fn names_the_cycle() {
        let err = ResourceGraph::from_dependencies(&deps(&[
            ("a", &["c"]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("d", &[]),
        ]))
        .unwrap_err();
        assert_eq!(
            err.describe(),
            "a -> c -> b -> a (each depends on the next)"
        );
    }

    #[test]
    fn topological_order_puts_dependencies_first() {
        let g = ResourceGraph::from_dependencies(&deps(&[
            ("subnet", &["vpc"]),
            ("vpc", &[]),
            ("rt", &["vpc", "igw"]),
            ("igw", &["vpc"]),
        ]))
        .unwrap();
        let order = g.topological();
        let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
        assert!(pos("vpc") < pos("subnet") && pos("igw") < pos("rt") && pos("vpc") < pos("igw"));
    }

    #[tokio::test]
    async fn failure_skips_dependents_but_not_independent_branches() {
        let d = deps(&[
            ("vpc", &[]),
            ("a", &["vpc"]),
            ("b", &["a"]),
            ("x", &[]),
            ("y", &["x"]),
        ]);
        let stop = AtomicBool::new(false);
        let out = walk(&d, 4, &stop, |n| async move {
            if n == "a" {
                Err("boom".into())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(out["a"], Outcome::Failed("boom".into()));
        assert_eq!(
            out["b"],
            Outcome::Skipped {
                because: "a".into()
            }
        );
        assert_eq!(out["y"], Outcome::Done);
        assert_eq!(out["vpc"], Outcome::Done);
    }

    #[tokio::test]
    async fn the_longest_expected_chain_starts_first() {
        // a_quick and b_quick are ready with slow_db; with one slot, the node
        // heading the longest chain (slow_db -> replica) must go first.
        let d = deps(&[
            ("a_quick", &[]),
            ("b_quick", &[]),
            ("slow_db", &[]),
            ("replica", &["slow_db"]),
        ]);
        let cost = |n: &str| {
            if n == "slow_db" {
                1200
            } else if n == "replica" {
                600
            } else {
                1
            }
        };
        let prio = remaining_cost(&d, &cost);
        assert_eq!(prio["slow_db"], 1800);
        let stop = AtomicBool::new(false);
        let order = Mutex::new(Vec::new());
        walk_prioritized(&d, &prio, &BTreeSet::new(), 1, &stop, |n| {
            order.lock().unwrap().push(n);
            async { Ok(()) }
        })
        .await;
        assert_eq!(order.lock().unwrap()[0], "slow_db");
    }

    #[tokio::test]
    async fn side_branches_wait_for_the_critical_chains_quick_setup() {
        // vpc (quick) -> db (20 minutes); bucket and secret have slack.
        let d = deps(&[
            ("vpc", &[]),
            ("db", &["vpc"]),
            ("bucket", &[]),
            ("secret", &[]),
        ]);
        let cost = |n: &str| if n == "db" { 1200 } else { 1 };
        let prio = remaining_cost(&d, &cost);
        let quick: BTreeSet<String> = ["vpc", "bucket", "secret"].map(String::from).into();
        let stop = AtomicBool::new(false);
        let log = Mutex::new(Vec::new());
        walk_prioritized(&d, &prio, &quick, 10, &stop, |n| {
            let log = &log;
            async move {
                log.lock().unwrap().push(format!("start {n}"));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                log.lock().unwrap().push(format!("end {n}"));
                Ok(())
            }
        })
        .await;
        let log = log.into_inner().unwrap();
        let at = |e: &str| log.iter().position(|l| l == e).unwrap();
        assert!(at("start db") < at("start bucket"), "{log:?}");
        assert!(at("start db") < at("start secret"), "{log:?}");
        // Once the slow node runs, the rest run beside it.
        assert!(at("start bucket") < at("end db"), "{log:?}");
        // Without a quick setup on the chain, nothing waits.
        let log2 = Mutex::new(Vec::new());
        walk_prioritized(&d, &prio, &BTreeSet::new(), 10, &stop, |n| {
            log2.lock().unwrap().push(n);
            async { Ok(()) }
        })
        .await;
        assert_eq!(log2.into_inner().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn runs_independent_nodes_concurrently_within_the_bound() {
        let d = deps(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &["a", "b", "c"])]);
        let stop = AtomicBool::new(false);
        let live = Mutex::new((0usize, 0usize));
        let out = walk(&d, 2, &stop, |_| async {
            {
                let mut l = live.lock().unwrap();
                l.0 += 1;
                l.1 = l.1.max(l.0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            live.lock().unwrap().0 -= 1;
            Ok(())
        })
        .await;
        assert!(out.values().all(|o| *o == Outcome::Done));
        assert_eq!(live.lock().unwrap().1, 2);
    }
}
