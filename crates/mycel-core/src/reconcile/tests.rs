//! The reconciler's tests: named cases, then a property test over random fleets.

use std::collections::BTreeMap;

use super::*;
use crate::fleet::{MaxUnavailable, NodeSpec, Surge};
use crate::hash::BlobHash;
use crate::manifest::ServeOptions;
use crate::testing::Lcg;
use crate::version::VersionId;

const GIB: u64 = 1 << 30;

fn node(name: &str, location: &str, cpus: f64, memory_gib: u64) -> Node {
    Node {
        spec: NodeSpec {
            name: name.to_owned(),
            location: location.to_owned(),
            labels: BTreeMap::new(),
            cpus,
            memory_bytes: memory_gib * GIB,
            gpus: 0,
            gpu_devices: Vec::new(),
            agent_url: format!("http://{name}:7801"),
            datasets: Vec::new(),
            isolation: Default::default(),
            sandbox: Default::default(),
        },
        state: NodeState::Ready,
        last_heartbeat_ms: 0,
    }
}

fn lost(mut node: Node) -> Node {
    node.state = NodeState::Lost;
    node
}

fn version(n: u8) -> VersionId {
    VersionId(BlobHash::from_bytes([n; 32]))
}

/// One cpu and 1 GiB per replica, version 1.
fn deployment(name: &str, copies: &[(&str, u32)]) -> Deployment {
    Deployment {
        name: name.to_owned(),
        component: name.to_owned(),
        version: version(1),
        seq: 1,
        copies: copies.iter().map(|&(l, c)| (l.to_owned(), c)).collect(),
        serve: ServeOptions::default(),
        resources: Resources {
            cpus: 1.0,
            memory_bytes: GIB,
            gpus: 0,
        },
        signature: None,
        generation: 1,
        surge: Default::default(),
        max_unavailable: Default::default(),
        deadline_s: crate::fleet::DEFAULT_DEADLINE_S,
        require_signed: false,
    }
}

fn ids(plan: &Plan) -> Vec<&str> {
    plan.assignments
        .iter()
        .map(|a| a.replica.as_str())
        .collect()
}

fn node_of<'p>(plan: &'p Plan, replica: &str) -> &'p str {
    let found = plan.assignments.iter().find(|a| a.replica == replica);
    &found
        .unwrap_or_else(|| panic!("{replica} not in plan"))
        .node
}

fn on_node<'p>(plan: &'p Plan, node: &str) -> Vec<&'p str> {
    plan.assignments
        .iter()
        .filter(|a| a.node == node)
        .map(|a| a.replica.as_str())
        .collect()
}

fn in_location(plan: &Plan, deployment: &str, location: &str) -> usize {
    plan.assignments
        .iter()
        .filter(|a| a.deployment == deployment && a.location == location)
        .count()
}

/// The plan when every current replica is ready: the steady state.
fn plan(deployments: &[Deployment], nodes: &[Node], current: &[Assignment]) -> Plan {
    let ready = current.iter().map(|a| a.replica.as_str()).collect();
    reconcile(deployments, nodes, current, &ready)
}

#[test]
fn five_copies_spread_three_and_two_over_two_nodes() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 8.0, 16)];
    let plan = plan(&[deployment("echo", &[("paris", 5)])], &nodes, &[]);
    assert_eq!(on_node(&plan, "a").len(), 3);
    assert_eq!(on_node(&plan, "b").len(), 2);
    assert_eq!(
        ids(&plan),
        [
            "echo-paris-0",
            "echo-paris-1",
            "echo-paris-2",
            "echo-paris-3",
            "echo-paris-4"
        ]
    );
    assert!(plan.unplaced.is_empty());
}

#[test]
fn each_location_gets_its_copies_on_its_own_nodes() {
    let mut nodes = Vec::new();
    for (location, cpus) in [("new-york", 2.0), ("london", 1.0), ("tokyo", 2.0)] {
        for i in 1..=3 {
            nodes.push(node(&format!("{location}-{i}"), location, cpus, 4));
        }
    }
    let want = [("new-york", 5), ("london", 3), ("tokyo", 4)];
    let plan = plan(&[deployment("resnet", &want)], &nodes, &[]);

    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    for (location, copies) in want {
        assert_eq!(in_location(&plan, "resnet", location), copies as usize);
        let per_node: Vec<usize> = (1..=3)
            .map(|i| on_node(&plan, &format!("{location}-{i}")).len())
            .collect();
        let spread = per_node.iter().max().unwrap() - per_node.iter().min().unwrap();
        assert!(spread <= 1, "{location}: {per_node:?}");
    }
    for a in &plan.assignments {
        assert!(a.node.starts_with(&a.location), "{a:?}");
    }
}

#[test]
fn copies_beyond_capacity_are_unplaced_with_a_capacity_reason() {
    let nodes = [node("lon-1", "london", 2.0, 8)];
    let plan = plan(&[deployment("echo", &[("london", 3)])], &nodes, &[]);
    assert_eq!(plan.assignments.len(), 2);
    assert_eq!(plan.unplaced.len(), 1);
    let unplaced = &plan.unplaced[0];
    assert_eq!(
        (unplaced.deployment.as_str(), unplaced.location.as_str()),
        ("echo", "london")
    );
    assert_eq!(unplaced.count, 1);
    assert_eq!(
        unplaced.reason,
        "not enough capacity in location \"london\": needs 1 cpus, 1.0 GiB memory, \
         0 gpus per replica; the only ready node, \"lon-1\", has 0 cpus, 6.0 GiB memory, \
         0 gpus free (short of cpus)"
    );
}

#[test]
fn unknown_location_says_no_ready_node_and_lists_known_locations() {
    let nodes = [node("a", "new-york", 8.0, 8), node("b", "london", 8.0, 8)];
    let plan = plan(&[deployment("echo", &[("tokyo", 4)])], &nodes, &[]);
    assert!(plan.assignments.is_empty());
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].count, 4);
    assert_eq!(
        plan.unplaced[0].reason,
        "no ready node in location \"tokyo\"; locations with ready nodes: \"london\", \"new-york\""
    );
}

#[test]
fn location_whose_nodes_are_all_lost_says_so() {
    let nodes = [lost(node("t1", "tokyo", 8.0, 8))];
    let plan = plan(&[deployment("echo", &[("tokyo", 1)])], &nodes, &[]);
    assert_eq!(
        plan.unplaced[0].reason,
        "no ready node in location \"tokyo\" (1 lost); no node is ready in any location"
    );
}

#[test]
fn resources_no_node_can_hold_report_capacity_not_a_missing_node() {
    let mut gpu_model = deployment("llm", &[("paris", 1)]);
    gpu_model.resources.gpus = 1;
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 4.0, 16)];
    let plan = plan(&[gpu_model], &nodes, &[]);
    let reason = &plan.unplaced[0].reason;
    assert!(
        reason.starts_with("not enough capacity in location \"paris\""),
        "{reason}"
    );
    assert!(
        reason.contains("the best of 2 ready nodes, \"a\", has 8 cpus"),
        "{reason}"
    );
    assert!(reason.ends_with("(short of gpus)"), "{reason}");
}

#[test]
fn lost_node_replicas_move_with_new_ids_and_others_stay_put() {
    let nodes = [
        node("a", "paris", 8.0, 16),
        node("b", "paris", 8.0, 16),
        node("c", "paris", 8.0, 16),
    ];
    let echo = [deployment("echo", &[("paris", 3)])];
    let before = plan(&echo, &nodes, &[]);
    assert_eq!(node_of(&before, "echo-paris-1"), "b");

    let nodes_b_lost = [nodes[0].clone(), lost(nodes[1].clone()), nodes[2].clone()];
    let after = plan(&echo, &nodes_b_lost, &before.assignments);

    // The replica on b may still serve where b is: it stays until its replacement
    // is ready.
    assert_eq!(
        ids(&after),
        [
            "echo-paris-0",
            "echo-paris-1",
            "echo-paris-2",
            "echo-paris-3"
        ]
    );
    for kept in ["echo-paris-0", "echo-paris-1", "echo-paris-2"] {
        let old = before.assignments.iter().find(|a| a.replica == kept);
        let new = after.assignments.iter().find(|a| a.replica == kept);
        assert_eq!(old, new);
    }
    assert_ne!(node_of(&after, "echo-paris-3"), "b");
    assert!(after.unplaced.is_empty());
    let replaced = plan(&echo, &nodes_b_lost, &after.assignments);
    assert_eq!(
        ids(&replaced),
        ["echo-paris-0", "echo-paris-2", "echo-paris-3"]
    );
}

#[test]
fn a_node_back_from_a_partition_keeps_its_replicas_and_the_replacements_go() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 8.0, 16)];
    let echo = [deployment("echo", &[("paris", 2)])];
    let before = plan(&echo, &nodes, &[]);
    assert_eq!(node_of(&before, "echo-paris-1"), "b");

    // b is cut off: a replacement starts on a and is not ready yet.
    let partitioned = [nodes[0].clone(), lost(nodes[1].clone())];
    let ready: HashSet<&str> = ["echo-paris-0"].into();
    let during = reconcile(&echo, &partitioned, &before.assignments, &ready);
    assert_eq!(
        ids(&during),
        ["echo-paris-0", "echo-paris-1", "echo-paris-2"]
    );
    assert_eq!(node_of(&during, "echo-paris-2"), "a");
    assert_eq!(
        reconcile(&echo, &partitioned, &during.assignments, &ready),
        during,
        "stable while the partition lasts"
    );

    // b is back before the replacement was ready: b's replica stays, the
    // replacement goes.
    let healed = reconcile(&echo, &nodes, &during.assignments, &ready);
    assert_eq!(ids(&healed), ["echo-paris-0", "echo-paris-1"]);
    assert_eq!(healed.assignments, before.assignments);

    // A location whose only node is lost keeps its replica assigned, and says the
    // copy cannot be placed elsewhere.
    let alone = [node("t", "tokyo", 8.0, 16)];
    let tokyo = [deployment("echo", &[("tokyo", 1)])];
    let placed = plan(&tokyo, &alone, &[]);
    let cut_off = plan(&tokyo, &[lost(alone[0].clone())], &placed.assignments);
    assert_eq!(cut_off.assignments, placed.assignments);
    assert_eq!(cut_off.unplaced[0].count, 1);
}

#[test]
fn scaling_down_removes_the_highest_indices() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 8.0, 16)];
    let five = plan(&[deployment("echo", &[("paris", 5)])], &nodes, &[]);
    let two = plan(
        &[deployment("echo", &[("paris", 2)])],
        &nodes,
        &five.assignments,
    );
    assert_eq!(two.assignments, five.assignments[..2]);
}

#[test]
fn scaling_up_keeps_existing_replicas_and_adds_new_ids() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 8.0, 16)];
    let two = plan(&[deployment("echo", &[("paris", 2)])], &nodes, &[]);
    let four = plan(
        &[deployment("echo", &[("paris", 4)])],
        &nodes,
        &two.assignments,
    );
    assert_eq!(four.assignments[..2], two.assignments[..]);
    assert_eq!(
        ids(&four),
        [
            "echo-paris-0",
            "echo-paris-1",
            "echo-paris-2",
            "echo-paris-3"
        ]
    );
    assert_eq!(on_node(&four, "a").len(), 2);
}

/// Ids of the plan's replicas running `v`.
fn running(plan: &Plan, v: u8) -> Vec<&str> {
    plan.assignments
        .iter()
        .filter(|a| a.version == version(v))
        .map(|a| a.replica.as_str())
        .collect()
}

fn at_version(name: &str, copies: &[(&str, u32)], v: u8) -> Deployment {
    let mut d = deployment(name, copies);
    d.version = version(v);
    d.seq = u64::from(v);
    d
}

#[test]
fn a_new_version_rolls_out_surge_first_then_one_for_one_as_new_ones_get_ready() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 8.0, 16)];
    let v1 = plan(&[deployment("echo", &[("paris", 4)])], &nodes, &[]);
    let v2 = [at_version("echo", &[("paris", 4)], 2)];

    // 25% of 4: one new replica beside the four old ones.
    let all_old_ready: HashSet<&str> = ids(&v1).into_iter().collect();
    let step = reconcile(&v2, &nodes, &v1.assignments, &all_old_ready);
    assert_eq!(running(&step, 1).len(), 4);
    assert_eq!(running(&step, 2), ["echo-paris-4"]);
    assert!(step.unplaced.is_empty());

    // Not ready yet: nothing changes.
    assert_eq!(
        reconcile(&v2, &nodes, &step.assignments, &all_old_ready),
        step
    );

    // Ready: one old replica goes, the highest index first, and one more new one starts.
    let mut ready = all_old_ready.clone();
    ready.insert("echo-paris-4");
    let step = reconcile(&v2, &nodes, &step.assignments, &ready);
    assert_eq!(
        running(&step, 1),
        ["echo-paris-0", "echo-paris-1", "echo-paris-2"]
    );
    assert_eq!(running(&step, 2), ["echo-paris-4", "echo-paris-5"]);

    // Everything ready: the old ones are gone.
    let mut current = step.assignments;
    for _ in 0..10 {
        let ready: HashSet<&str> = current.iter().map(|a| a.replica.as_str()).collect();
        let next = reconcile(&v2, &nodes, &current, &ready);
        if next.assignments == current {
            break;
        }
        current = next.assignments;
    }
    let ids: Vec<&str> = current.iter().map(|a| a.replica.as_str()).collect();
    assert_eq!(
        ids,
        [
            "echo-paris-4",
            "echo-paris-5",
            "echo-paris-6",
            "echo-paris-7"
        ]
    );
    assert!(current
        .iter()
        .all(|a| a.version == version(2) && a.seq == 2));
}

#[test]
fn surge_sets_how_many_new_replicas_start_at_once() {
    let nodes = [node("a", "paris", 16.0, 32)];
    let v1 = plan(&[deployment("echo", &[("paris", 4)])], &nodes, &[]);
    let mut v2 = at_version("echo", &[("paris", 4)], 2);
    v2.surge = Surge::Percent(100);
    let step = plan(std::slice::from_ref(&v2), &nodes, &v1.assignments);
    assert_eq!(running(&step, 1).len(), 4);
    assert_eq!(running(&step, 2).len(), 4);
    v2.surge = Surge::Count(3);
    let step = plan(&[v2], &nodes, &v1.assignments);
    assert_eq!(running(&step, 2).len(), 3);
    assert_eq!(Surge::Percent(25).of(5), 2);
    assert_eq!(Surge::Percent(10).of(0), 1);
    assert_eq!(Surge::Count(0).of(4), 1);
}

/// Reconciles until nothing changes, marking ready the replicas `ready` says are.
fn settle(
    deployments: &[Deployment],
    nodes: &[Node],
    mut current: Vec<Assignment>,
    ready: impl Fn(&Assignment) -> bool,
) -> Plan {
    for _ in 0..50 {
        let ready_ids: HashSet<&str> = current
            .iter()
            .filter(|a| ready(a))
            .map(|a| a.replica.as_str())
            .collect();
        let next = reconcile(deployments, nodes, &current, &ready_ids);
        if next.assignments == current {
            return next;
        }
        current = next.assignments;
    }
    panic!("no fixed point");
}

#[test]
fn a_rollout_on_full_nodes_replaces_one_replica_at_a_time_in_place() {
    // The default node of `mycel up` on two cores: two copies fill it.
    let nodes = [node("ny", "new-york", 2.0, 8)];
    let v1 = plan(&[deployment("echo", &[("new-york", 2)])], &nodes, &[]);
    let v2 = [at_version("echo", &[("new-york", 2)], 2)];
    let old_ready: HashSet<&str> = ids(&v1).into_iter().collect();

    // No room for a surge replica: the highest index stops, a new one takes its room.
    let step = reconcile(&v2, &nodes, &v1.assignments, &old_ready);
    assert_eq!(running(&step, 1), ["echo-new-york-0"]);
    assert_eq!(running(&step, 2), ["echo-new-york-2"]);
    assert_eq!(node_of(&step, "echo-new-york-2"), "ny");
    assert!(step.unplaced.is_empty(), "{:?}", step.unplaced);
    assert_eq!(step.in_place.len(), 1);
    let note = &step.in_place[0];
    assert_eq!((note.copies, note.max_unavailable), (2, 1));
    assert!(!note.empties_location());
    assert!(note.reason.contains("short of cpus"), "{}", note.reason);

    // Until the new one is ready the last old one keeps serving: nothing changes.
    assert_eq!(reconcile(&v2, &nodes, &step.assignments, &old_ready), step);

    // Ready: the last old one makes room for the second new one.
    let mut ready = old_ready.clone();
    ready.insert("echo-new-york-2");
    let step = reconcile(&v2, &nodes, &step.assignments, &ready);
    assert!(running(&step, 1).is_empty());
    assert_eq!(running(&step, 2), ["echo-new-york-2", "echo-new-york-3"]);
    assert_eq!(step.in_place.len(), 1);
    assert!(step.unplaced.is_empty());
    let done = plan(&v2, &nodes, &step.assignments);
    assert_eq!(done.assignments, step.assignments);
    assert!(done.in_place.is_empty());
}

#[test]
fn in_place_replacement_keeps_copies_minus_max_unavailable_ready() {
    let nodes = [node("a", "paris", 4.0, 16), node("b", "paris", 4.0, 16)];
    let v1 = plan(&[deployment("echo", &[("paris", 8)])], &nodes, &[]);
    for (max_unavailable, at_once) in [
        (MaxUnavailable::Percent(25), 2),
        (MaxUnavailable::Percent(10), 1),
        (MaxUnavailable::Count(3), 3),
        (MaxUnavailable::Percent(100), 8),
    ] {
        let mut v2 = at_version("echo", &[("paris", 8)], 2);
        v2.max_unavailable = max_unavailable;
        let old_ready: HashSet<&str> = ids(&v1).into_iter().collect();
        let step = reconcile(&[v2.clone()], &nodes, &v1.assignments, &old_ready);
        assert_eq!(running(&step, 2).len(), at_once, "{max_unavailable}");
        assert_eq!(running(&step, 1).len(), 8 - at_once, "{max_unavailable}");
        let done = settle(&[v2], &nodes, step.assignments, |_| true);
        assert_eq!(running(&done, 2).len(), 8);
        assert!(running(&done, 1).is_empty());
    }
}

#[test]
fn a_single_copy_on_a_full_node_is_replaced_and_says_the_location_empties() {
    let nodes = [node("t", "tokyo", 1.0, 8)];
    let v1 = plan(&[deployment("echo", &[("tokyo", 1)])], &nodes, &[]);
    let v2 = [at_version("echo", &[("tokyo", 1)], 2)];
    let old_ready: HashSet<&str> = ids(&v1).into_iter().collect();
    let step = reconcile(&v2, &nodes, &v1.assignments, &old_ready);
    assert!(running(&step, 1).is_empty());
    assert_eq!(running(&step, 2), ["echo-tokyo-1"]);
    assert!(step.unplaced.is_empty());
    assert!(step.in_place[0].empties_location());
}

#[test]
fn max_unavailable_zero_waits_for_room_and_says_so() {
    let nodes = [node("ny", "new-york", 2.0, 8)];
    let v1 = plan(&[deployment("echo", &[("new-york", 2)])], &nodes, &[]);
    let mut v2 = at_version("echo", &[("new-york", 2)], 2);
    v2.max_unavailable = MaxUnavailable::Count(0);
    let step = plan(&[v2], &nodes, &v1.assignments);
    assert_eq!(step.assignments, v1.assignments);
    assert!(step.in_place.is_empty());
    let reason = &step.unplaced[0].reason;
    assert!(reason.contains("short of cpus"), "{reason}");
    assert!(
        reason.contains("more than --max-unavailable 0 allows"),
        "{reason}"
    );
}

#[test]
fn bigger_new_replicas_stop_as_many_old_ones_as_they_need() {
    let nodes = [node("a", "paris", 4.0, 16)];
    let mut other = deployment("other", &[("paris", 1)]);
    other.resources.cpus = 2.0;
    let v1 = plan(
        &[deployment("echo", &[("paris", 2)]), other.clone()],
        &nodes,
        &[],
    );
    let mut v2 = at_version("echo", &[("paris", 2)], 2);
    v2.resources.cpus = 2.0;
    // Both old ones must stop for one new one; 25 % of 2 copies allows one.
    let step = plan(&[v2.clone(), other.clone()], &nodes, &v1.assignments);
    assert!(running(&step, 2).iter().all(|id| id.starts_with("other")));
    assert!(step.unplaced[0]
        .reason
        .contains("would take 2 out of service at once, more than --max-unavailable 25% allows"));
    v2.max_unavailable = MaxUnavailable::Percent(100);
    let done = settle(&[v2, other], &nodes, v1.assignments, |_| true);
    assert_eq!(running(&done, 2), ["echo-paris-2"]);
    assert!(running(&done, 1).iter().all(|id| id.starts_with("other")));
    assert_eq!(done.unplaced[0].count, 1);
}

#[test]
fn replicas_whose_state_is_unknown_count_as_serving() {
    // A control plane that just started has heard from no replica: it must not take
    // that for "none is ready" and replace everything in place at once.
    let nodes = [node("ny", "new-york", 4.0, 8)];
    let v1 = plan(&[deployment("echo", &[("new-york", 4)])], &nodes, &[]);
    let v2 = [at_version("echo", &[("new-york", 4)], 2)];
    let nothing = HashSet::new();
    let step = reconcile_reported(&v2, &nodes, &v1.assignments, &nothing, &nothing);
    assert_eq!(running(&step, 1).len(), 3);
    assert_eq!(running(&step, 2).len(), 1);
}

#[test]
fn a_location_short_of_its_copies_is_not_replaced_by_halves() {
    // Room for two of three copies: the rollout could never complete there.
    let nodes = [node("ny", "new-york", 2.0, 8)];
    let v1 = plan(&[deployment("echo", &[("new-york", 3)])], &nodes, &[]);
    assert_eq!(v1.assignments.len(), 2);
    let step = plan(
        &[at_version("echo", &[("new-york", 3)], 2)],
        &nodes,
        &v1.assignments,
    );
    assert_eq!(step.assignments, v1.assignments);
    assert!(step.unplaced[0]
        .reason
        .contains("waits until all 3 copies are placed (2 are)"));
}

#[test]
fn max_unavailable_rounds_down_but_allows_one() {
    assert_eq!(MaxUnavailable::Percent(25).of(2), 1);
    assert_eq!(MaxUnavailable::Percent(25).of(8), 2);
    assert_eq!(MaxUnavailable::Percent(25).of(11), 2);
    assert_eq!(MaxUnavailable::Percent(25).of(0), 0);
    assert_eq!(MaxUnavailable::Percent(0).of(8), 0);
    assert_eq!(MaxUnavailable::Count(5).of(3), 3);
    assert_eq!("0".parse(), Ok(MaxUnavailable::Count(0)));
    assert_eq!("50%".parse(), Ok(MaxUnavailable::Percent(50)));
    assert!("150%".parse::<MaxUnavailable>().is_err());
    assert!("some".parse::<MaxUnavailable>().is_err());
}

#[test]
fn outdated_replicas_that_are_not_ready_go_first() {
    let nodes = [node("a", "paris", 8.0, 16)];
    let v1 = plan(&[deployment("echo", &[("paris", 3)])], &nodes, &[]);
    let v2 = [at_version("echo", &[("paris", 3)], 2)];
    // echo-paris-0 is crash-looping; the two others serve.
    let ready: HashSet<&str> = ["echo-paris-1", "echo-paris-2", "echo-paris-3"].into();
    let mut current = v1.assignments.clone();
    current.extend(
        plan(&v2, &nodes, &v1.assignments)
            .assignments
            .into_iter()
            .filter(|a| a.version == version(2)),
    );
    let step = reconcile(&v2, &nodes, &current, &ready);
    assert_eq!(running(&step, 1), ["echo-paris-1", "echo-paris-2"]);
}

#[test]
fn rolling_back_mid_rollout_keeps_the_old_replicas_and_drops_new_ones_not_ready() {
    let nodes = [node("a", "paris", 8.0, 16)];
    let v1 = [deployment("echo", &[("paris", 4)])];
    let first = plan(&v1, &nodes, &[]);
    let mut v2 = at_version("echo", &[("paris", 4)], 2);
    v2.surge = Surge::Count(2);
    let step = plan(&[v2], &nodes, &first.assignments);
    assert_eq!(running(&step, 2), ["echo-paris-4", "echo-paris-5"]);

    // One new replica got ready (and took an old one's place), one crashed: back to v1.
    let ready: HashSet<&str> = [
        "echo-paris-0",
        "echo-paris-1",
        "echo-paris-2",
        "echo-paris-4",
    ]
    .into();
    let back = reconcile(&v1, &nodes, &step.assignments, &ready);
    assert_eq!(
        running(&back, 1),
        [
            "echo-paris-0",
            "echo-paris-1",
            "echo-paris-2",
            "echo-paris-3"
        ]
    );
    // The ready v2 replica serves until the v1 copies are ready again.
    assert_eq!(running(&back, 2), ["echo-paris-4"]);
    let all: HashSet<&str> = ids(&back).into_iter().collect();
    let done = reconcile(&v1, &nodes, &back.assignments, &all);
    assert_eq!(running(&done, 2), Vec::<&str>::new());
    assert_eq!(running(&done, 1).len(), 4);
}

#[test]
fn changed_resources_or_serve_options_replace_replicas() {
    let nodes = [node("a", "paris", 8.0, 16)];
    let before = plan(&[deployment("echo", &[("paris", 1)])], &nodes, &[]);
    let mut bigger = deployment("echo", &[("paris", 1)]);
    bigger.resources.cpus = 2.0;
    let after = plan(std::slice::from_ref(&bigger), &nodes, &before.assignments);
    assert_eq!(ids(&after), ["echo-paris-0", "echo-paris-1"]);
    let settled = plan(&[bigger], &nodes, &after.assignments);
    assert_eq!(ids(&settled), ["echo-paris-1"]);
    assert_eq!(settled.assignments[0].resources.cpus, 2.0);

    let mut batched = deployment("echo", &[("paris", 1)]);
    batched.serve.max_batch_size = 8;
    let batched_plan = plan(&[batched], &nodes, &before.assignments);
    assert_eq!(ids(&batched_plan), ["echo-paris-0", "echo-paris-1"]);
    assert_eq!(batched_plan.assignments[1].serve.max_batch_size, 8);
}

#[test]
fn deleted_deployment_drops_its_replicas_only() {
    let nodes = [node("a", "paris", 8.0, 16)];
    let both = [
        deployment("echo", &[("paris", 2)]),
        deployment("resnet", &[("paris", 1)]),
    ];
    let before = plan(&both, &nodes, &[]);
    let after = plan(&both[1..], &nodes, &before.assignments);
    assert_eq!(ids(&after), ["resnet-paris-0"]);
    assert_eq!(after.assignments[0], before.assignments[2]);
}

#[test]
fn deployments_sharing_a_node_respect_combined_capacity() {
    let nodes = [node("a", "paris", 4.0, 3)];
    let plan = plan(
        &[
            deployment("echo", &[("paris", 2)]),
            deployment("resnet", &[("paris", 2)]),
        ],
        &nodes,
        &[],
    );
    // Three GiB of memory hold three 1 GiB replicas, though four cpus would hold four.
    assert_eq!(plan.assignments.len(), 3);
    assert_eq!(in_location(&plan, "echo", "paris"), 2);
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].deployment, "resnet");
    assert!(plan.unplaced[0].reason.ends_with("(short of memory)"));
}

#[test]
fn kept_replicas_reserve_capacity_before_new_ones_are_placed() {
    let nodes = [node("a", "paris", 2.0, 16)];
    let zeta = deployment("zeta", &[("paris", 2)]);
    let before = plan(std::slice::from_ref(&zeta), &nodes, &[]);
    // "alpha" is placed first by name, but zeta's running replicas keep their room.
    let after = plan(
        &[deployment("alpha", &[("paris", 1)]), zeta],
        &nodes,
        &before.assignments,
    );
    assert_eq!(after.assignments, before.assignments);
    assert_eq!(after.unplaced[0].deployment, "alpha");
}

#[test]
fn fractional_cpus_add_up_without_rounding_trouble() {
    let nodes = [node("a", "paris", 0.3, 16)];
    let mut small = deployment("echo", &[("paris", 3)]);
    small.resources.cpus = 0.1;
    let plan = plan(&[small], &nodes, &[]);
    assert_eq!(plan.assignments.len(), 3);
    assert!(plan.unplaced.is_empty());
}

#[test]
fn zero_copies_means_none_there_and_nothing_unplaced() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "berlin", 8.0, 16)];
    let before = plan(
        &[deployment("echo", &[("paris", 2), ("berlin", 1)])],
        &nodes,
        &[],
    );
    let after = plan(
        &[deployment("echo", &[("paris", 0), ("berlin", 1)])],
        &nodes,
        &before.assignments,
    );
    assert_eq!(ids(&after), ["echo-berlin-0"]);
    assert!(after.unplaced.is_empty());
}

#[test]
fn dropping_a_location_removes_its_replicas() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "berlin", 8.0, 16)];
    let before = plan(
        &[deployment("echo", &[("paris", 1), ("berlin", 1)])],
        &nodes,
        &[],
    );
    let after = plan(
        &[deployment("echo", &[("berlin", 1)])],
        &nodes,
        &before.assignments,
    );
    assert_eq!(ids(&after), ["echo-berlin-0"]);
}

#[test]
fn node_that_moved_location_loses_its_replicas() {
    let nodes = [node("a", "paris", 8.0, 16), node("b", "paris", 8.0, 16)];
    let echo = [deployment("echo", &[("paris", 2)])];
    let before = plan(&echo, &nodes, &[]);
    let moved = [nodes[0].clone(), node("b", "berlin", 8.0, 16)];
    let after = plan(&echo, &moved, &before.assignments);
    assert_eq!(on_node(&after, "a"), ["echo-paris-0", "echo-paris-2"]);
    assert!(on_node(&after, "b").is_empty());
}

#[test]
fn assignments_on_unknown_nodes_are_replaced() {
    let nodes = [node("a", "paris", 8.0, 16)];
    let echo = [deployment("echo", &[("paris", 1)])];
    let mut ghost = plan(&echo, &nodes, &[]).assignments;
    ghost[0].node = "gone".to_owned();
    let after = plan(&echo, &nodes, &ghost);
    assert_eq!(ids(&after), ["echo-paris-1"]);
    assert_eq!(node_of(&after, "echo-paris-1"), "a");
}

#[test]
fn new_ids_continue_after_the_highest_current_index() {
    let nodes = [
        node("a", "paris", 8.0, 16),
        lost(node("b", "paris", 8.0, 16)),
    ];
    let echo = [deployment("echo", &[("paris", 3)])];
    let mut current = plan(&echo, &nodes[..1], &[]).assignments;
    current.truncate(1);
    // A replica on the lost node with a high index: its id must not come back.
    let mut on_lost = current[0].clone();
    on_lost.replica = "echo-paris-7".to_owned();
    on_lost.node = "b".to_owned();
    current.push(on_lost);
    let plan = plan(&echo, &nodes, &current);
    assert_eq!(
        ids(&plan),
        [
            "echo-paris-0",
            "echo-paris-7",
            "echo-paris-8",
            "echo-paris-9"
        ]
    );
}

#[test]
fn ids_without_an_index_are_kept_but_removed_first() {
    let nodes = [node("a", "paris", 8.0, 16)];
    let two = plan(&[deployment("echo", &[("paris", 2)])], &nodes, &[]);
    let mut current = two.assignments.clone();
    current[1].replica = "echo-legacy".to_owned();
    let kept = plan(&[deployment("echo", &[("paris", 2)])], &nodes, &current);
    assert_eq!(ids(&kept), ["echo-legacy", "echo-paris-0"]);
    let one = plan(&[deployment("echo", &[("paris", 1)])], &nodes, &current);
    assert_eq!(ids(&one), ["echo-paris-0"]);
}

#[test]
fn dashed_names_that_spell_the_same_prefix_get_distinct_ids() {
    let nodes = [node("n1", "c", 8.0, 16), node("n2", "b-c", 8.0, 16)];
    let plan = plan(
        &[
            deployment("a-b", &[("c", 2)]),
            deployment("a", &[("b-c", 2)]),
        ],
        &nodes,
        &[],
    );
    assert_eq!(ids(&plan), ["a-b-c-0", "a-b-c-1", "a-b-c-2", "a-b-c-3"]);
    assert_eq!(in_location(&plan, "a", "b-c"), 2);
    assert_eq!(in_location(&plan, "a-b", "c"), 2);
}

#[test]
fn assignment_fields_come_from_the_deployment_and_the_node() {
    let nodes = [node("lon-1", "london", 8.0, 16)];
    let mut echo = deployment("echo-prod", &[("london", 1)]);
    echo.component = "echo".to_owned();
    echo.serve.max_batch_size = 4;
    let plan = plan(std::slice::from_ref(&echo), &nodes, &[]);
    assert_eq!(
        plan.assignments,
        [Assignment {
            replica: "echo-prod-london-0".to_owned(),
            deployment: "echo-prod".to_owned(),
            component: "echo".to_owned(),
            version: echo.version,
            seq: echo.seq,
            node: "lon-1".to_owned(),
            location: "london".to_owned(),
            resources: echo.resources,
            serve: echo.serve,
        }]
    );
}

#[test]
fn input_order_does_not_change_the_plan() {
    let nodes = vec![
        node("a", "paris", 4.0, 8),
        node("b", "paris", 2.0, 8),
        node("c", "berlin", 4.0, 8),
    ];
    let deployments = vec![
        deployment("echo", &[("paris", 3), ("berlin", 2)]),
        deployment("resnet", &[("paris", 2), ("tokyo", 1)]),
    ];
    let first = plan(&deployments, &nodes, &[]);
    let mut nodes_reversed = nodes.clone();
    nodes_reversed.reverse();
    let mut deployments_reversed = deployments.clone();
    deployments_reversed.reverse();
    assert_eq!(plan(&deployments_reversed, &nodes_reversed, &[]), first);

    let mut current_reversed = first.assignments.clone();
    current_reversed.reverse();
    assert_eq!(
        plan(&deployments_reversed, &nodes_reversed, &current_reversed),
        first
    );
}

const LOCATIONS: [&str; 4] = ["berlin", "london", "paris", "tokyo"];

fn random_nodes(rng: &mut Lcg) -> Vec<Node> {
    (0..rng.below(7))
        .map(|i| {
            // Tokyo never gets nodes, so the no-node path is exercised too.
            let location = LOCATIONS[rng.below(3) as usize];
            let mut n = node(
                &format!("n{i}"),
                location,
                (1 + rng.below(8)) as f64 / 2.0,
                1 + rng.below(8),
            );
            n.spec.gpus = rng.below(3) as u32;
            n
        })
        .collect()
}

fn random_deployments(rng: &mut Lcg) -> Vec<Deployment> {
    (0..1 + rng.below(4))
        .map(|i| {
            let mut copies = Vec::new();
            for location in LOCATIONS {
                if rng.chance(50) {
                    copies.push((location, rng.below(6) as u32));
                }
            }
            let mut d = deployment(&format!("d{i}"), &copies);
            d.version = version(1 + rng.below(2) as u8);
            d.resources = Resources {
                cpus: (1 + rng.below(4)) as f64 / 4.0,
                memory_bytes: (1 + rng.below(4)) * (GIB / 2),
                gpus: u32::from(rng.chance(20)),
            };
            d.max_unavailable = match rng.below(4) {
                0 | 1 => MaxUnavailable::Count(0),
                2 => MaxUnavailable::Percent(50),
                _ => MaxUnavailable::default(),
            };
            d
        })
        .collect()
}

/// Some nodes lost, some deployments deleted, rescaled or given a new version.
fn perturb(rng: &mut Lcg, nodes: &mut [Node], deployments: &mut Vec<Deployment>) {
    for n in nodes.iter_mut() {
        if rng.chance(25) {
            n.state = NodeState::Lost;
        }
    }
    deployments.retain(|_| !rng.chance(15));
    for d in deployments.iter_mut() {
        if rng.chance(30) {
            d.version = version(3);
        }
        for copies in d.copies.values_mut() {
            if rng.chance(40) {
                *copies = rng.below(6) as u32;
            }
        }
    }
}

/// With every replica ready, a step may drop an up-to-date or outdated replica of a
/// deployment in a location only while as many ones as it wants remain, less the
/// ones it may take out of service to replace in place.
fn check_no_early_drain(
    seed: u64,
    deployments: &[Deployment],
    nodes: &[Node],
    before: &Plan,
    after: &Plan,
) {
    for d in deployments {
        for (location, &copies) in &d.copies {
            let live = |p: &Plan| {
                p.assignments
                    .iter()
                    .filter(|a| a.deployment == d.name && &a.location == location)
                    .filter(|a| {
                        nodes
                            .iter()
                            .any(|n| n.spec.name == a.node && n.state == NodeState::Ready)
                    })
                    .map(|a| a.replica.clone())
                    .collect::<HashSet<String>>()
            };
            let (was, now) = (live(before), live(after));
            let still_serving = was.intersection(&now).count();
            let may_go = d.max_unavailable.of(copies) as usize;
            assert!(
                still_serving + may_go >= was.len().min(copies as usize),
                "seed {seed}: {} in {location} dropped to {still_serving} of {} serving",
                d.name,
                was.len()
            );
        }
    }
}

/// Checks a fixed point; returns false if a rollout there waits for room that is not
/// there (outdated replicas kept, the surge unplaced).
fn check_invariants(seed: u64, deployments: &[Deployment], nodes: &[Node], plan: &Plan) -> bool {
    let ready: HashMap<&str, &Node> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .map(|n| (n.spec.name.as_str(), n))
        .collect();
    let unique: HashSet<&str> = ids(plan).into_iter().collect();
    assert_eq!(unique.len(), plan.assignments.len(), "seed {seed}: ids");
    assert!(
        plan.assignments
            .windows(2)
            .all(|w| w[0].replica < w[1].replica),
        "seed {seed}: sorted"
    );

    let mut loads = ready_node_loads(nodes);
    let on_lost = |a: &Assignment| {
        nodes.iter().any(|n| {
            n.spec.name == a.node && n.state == NodeState::Lost && n.spec.location == a.location
        })
    };
    for a in &plan.assignments {
        let n = ready.get(a.node.as_str());
        assert!(
            n.is_some_and(|n| n.spec.location == a.location) || on_lost(a),
            "seed {seed}: {a:?}"
        );
        add_to_node(&mut loads, a);
    }
    for load in loads.values() {
        let free = load.free();
        assert!(
            free.cpus > -CPU_EPSILON,
            "seed {seed}: {} over",
            load.name()
        );
        assert!(load.used.memory_bytes <= load.node.spec.memory_bytes);
        assert!(load.used.gpus <= load.node.spec.gpus);
    }

    let mut settled = true;
    for d in deployments {
        for (location, &copies) in &d.copies {
            let mine = |a: &&Assignment| a.deployment == d.name && &a.location == location;
            // Stranded on a lost node: kept only while nothing could replace them.
            let stranded = plan
                .assignments
                .iter()
                .filter(mine)
                .filter(|a| on_lost(a))
                .count();
            let here: Vec<&Assignment> = plan
                .assignments
                .iter()
                .filter(mine)
                .filter(|a| !on_lost(a))
                .collect();
            let outdated = here.iter().filter(|a| !up_to_date(a, d)).count();
            let missing = plan
                .unplaced
                .iter()
                .find(|u| u.deployment == d.name && &u.location == location)
                .map_or(0, |u| u.count as usize);
            assert!(
                stranded == 0 || missing > 0,
                "seed {seed}: {} kept {stranded} replicas of lost nodes with nothing missing",
                d.name
            );
            if missing > 0 {
                let room = loads
                    .values()
                    .any(|l| l.location() == location && l.fits(&d.resources));
                assert!(!room, "seed {seed}: {} gave up with room left", d.name);
            }
            if outdated > 0 {
                assert!(
                    missing > 0,
                    "seed {seed}: {} kept outdated replicas with nothing missing: {plan:#?}",
                    d.name
                );
                // Stuck only where replacing in place is forbidden or cannot help.
                let reason = plan
                    .unplaced
                    .iter()
                    .find(|u| u.deployment == d.name && &u.location == location)
                    .map(|u| u.reason.as_str())
                    .unwrap_or_default();
                let nowhere = !nodes.iter().any(|n| {
                    n.state == NodeState::Ready
                        && &n.spec.location == location
                        && n.spec.cpus + CPU_EPSILON >= d.resources.cpus
                        && n.spec.memory_bytes >= d.resources.memory_bytes
                        && n.spec.gpus >= d.resources.gpus
                });
                assert!(
                    reason.contains("--max-unavailable 0")
                        || reason.contains("waits until all")
                        || nowhere,
                    "seed {seed}: {} stuck with outdated replicas: {reason}",
                    d.name
                );
                settled = false;
            } else {
                assert_eq!(here.len() + missing, copies as usize, "seed {seed}: {d:?}");
            }
        }
    }
    settled
}

#[test]
fn reconciling_a_plan_again_changes_nothing() {
    // How often each path ran, so the generator cannot quietly stop covering one.
    let (mut kept, mut replaced, mut short_of_room, mut no_node, mut stuck) = (0, 0, 0, 0, 0);
    let mut in_place = 0;
    for seed in 0..1500 {
        let mut rng = Lcg(seed);
        let mut nodes = random_nodes(&mut rng);
        let mut deployments = random_deployments(&mut rng);
        let first = plan(&deployments, &nodes, &[]);
        assert!(check_invariants(seed, &deployments, &nodes, &first));
        assert_eq!(
            plan(&deployments, &nodes, &first.assignments),
            first,
            "seed {seed}"
        );

        perturb(&mut rng, &mut nodes, &mut deployments);
        let mut second = plan(&deployments, &nodes, &first.assignments);
        let mut steps = vec![(first.clone(), second.clone())];
        for step in 0.. {
            assert!(step < 50, "seed {seed}: no fixed point");
            let next = plan(&deployments, &nodes, &second.assignments);
            if next == second {
                break;
            }
            check_no_early_drain(seed, &deployments, &nodes, &second, &next);
            in_place += next.in_place.len();
            steps.push((second, next.clone()));
            second = next;
        }
        if !check_invariants(seed, &deployments, &nodes, &second) {
            stuck += 1;
        }
        // An id that survives a step means the same replica: same node, same version.
        for (before, after) in &steps {
            for a in &after.assignments {
                match before.assignments.iter().find(|o| o.replica == a.replica) {
                    Some(old) => {
                        assert_eq!(old, a, "seed {seed}: id {} changed meaning", a.replica);
                        kept += 1;
                    }
                    None => replaced += 1,
                }
            }
        }
        for u in first.unplaced.iter().chain(&second.unplaced) {
            if u.reason.starts_with("not enough capacity") {
                short_of_room += 1;
            } else {
                no_node += 1;
            }
        }
    }
    for (path, count) in [
        ("kept", kept),
        ("replaced", replaced),
        ("short of room", short_of_room),
        ("no node", no_node),
        ("rollout stuck for room", stuck),
        ("replaced in place", in_place),
    ] {
        assert!(count > 20, "{path} ran only {count} times");
    }
}
