//! The reconciler: deployments, nodes, the current assignments and which replicas are
//! ready in, the next assignments and the copies that cannot be placed out. A pure
//! function over plain data.
//!
//! Rules. Every deployment gets exactly `copies` replicas in each location it names, or
//! fewer plus one [`Unplaced`] entry saying how many are missing and why. A current
//! assignment is kept unchanged (same replica id, same node) while its deployment exists
//! and its node is Ready and still in the assignment's location. One on a Lost node
//! (cut off, perhaps still serving where it is) is *stranded*: it stays assigned, taking
//! no capacity and counting for no copy, while fewer than `copies` up-to-date replicas
//! are ready on Ready nodes; replacements are placed as if it were gone. So a node back
//! from a partition keeps its replicas, and the replacements, with higher indices, are
//! the surplus that goes. It is *up to date* if it
//! also matches the deployment (version, component, resources and serve options), and
//! *outdated* otherwise. When copies shrink, up-to-date replicas that are not ready go
//! first, then the highest indices.
//!
//! Rolling updates fall out of two limits per deployment and location, with `copies`
//! wanted and `surge` allowed on top ([`Surge`](crate::fleet::Surge)): outdated replicas
//! are kept while up-to-date ready ones number fewer than `copies` (as many as are
//! missing, ready ones first, the highest indices going first), and new replicas are
//! placed only while up-to-date plus outdated replicas number fewer than
//! `copies + surge`. So a new version starts `surge` replicas, an old one goes each time
//! a new one is ready, and the ready count never drops below `copies` on the way. A
//! rollback is the same walk back; a new deployment, with nothing outdated, starts all
//! its copies at once.
//!
//! New replicas go to Ready nodes of the location with room for them (cpus, memory and
//! gpus of everything already planned on the node, all deployments together): among
//! those, the node with the fewest replicas of the deployment, then the most free CPU,
//! then the first name, so copies spread out. Kept replicas reserve their capacity before
//! anything new is placed. Deployments are handled in name order and locations in sorted
//! order, and the output is sorted by replica id, so equal inputs give equal plans, and
//! reconciling a plan again changes nothing.
//!
//! Where no node of a location has room for a new replica beside the old ones, outdated
//! replicas are replaced in place: stopped (not-ready ones first) for new ones to take
//! their room, while the location keeps `copies - max_unavailable` serving. A replica
//! whose state was never reported counts as serving. A location short of its copies is
//! not replaced in place, since its rollout could never complete.
//!
//! Replica ids are `{deployment}-{location}-{index}`. A new replica's index is one more
//! than the highest index among all ids in `current` and in the plan so far that start
//! with the same `{deployment}-{location}-` prefix (0 when there is none), skipping any id
//! already taken. So a replacement never reuses an id that `current` holds, for whatever
//! node or version; agents key processes by replica id. Ids that no longer appear in
//! `current` may come back later (scale to 0, then up again): this function remembers
//! nothing beyond its inputs.
//!
//! Deliberately absent: kept replicas are not re-checked against capacity (a node that
//! re-registers smaller keeps what it runs).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::api::RolloutLocation;
use crate::fleet::{Assignment, Deployment, InPlace, Node, NodeState, Unplaced};
use crate::manifest::Resources;

/// Slack when summing fractional CPU requests, so that 0.1 + 0.2 fits in 0.3 cores.
const CPU_EPSILON: f64 = 1e-9;

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// What the fleet should run next.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Every replica that should run, sorted by replica id.
    pub assignments: Vec<Assignment>,
    /// Copies that found no node: one entry per deployment and location, in deployment
    /// then location order.
    pub unplaced: Vec<Unplaced>,
    /// Locations where a rolling update replaces old replicas in place (no room beside
    /// them) in this step or waits to, in deployment then location order.
    pub in_place: Vec<InPlace>,
}

/// Computes the next assignments from the desired state, the current assignments and
/// the ids of the replicas that are ready, every replica's state being known. The
/// module documentation states the rules.
pub fn reconcile(
    deployments: &[Deployment],
    nodes: &[Node],
    current: &[Assignment],
    ready: &HashSet<&str>,
) -> Plan {
    let reported: HashSet<&str> = current.iter().map(|a| a.replica.as_str()).collect();
    reconcile_reported(deployments, nodes, current, ready, &reported)
}

/// [`reconcile`] when only the replicas in `reported` have said how they are (a control
/// plane that just started): one that has not is taken to be serving wherever taking it
/// out of service is at stake.
pub fn reconcile_reported(
    deployments: &[Deployment],
    nodes: &[Node],
    current: &[Assignment],
    ready: &HashSet<&str>,
    reported: &HashSet<&str>,
) -> Plan {
    let deployments = by_name(deployments);
    let mut loads = ready_node_loads(nodes);
    let lost: HashMap<&str, &str> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Lost)
        .map(|n| (n.spec.name.as_str(), n.spec.location.as_str()))
        .collect();
    let (mut assignments, kept) = keep_current(&deployments, &loads, &lost, current, ready);
    for assignment in &assignments {
        add_to_node(&mut loads, assignment);
    }

    let mut ids = ReplicaIds::new(current);
    let mut in_place = Vec::new();
    // (deployment, location, copies short, why replacing in place cannot help)
    let mut shortfalls: Vec<(&Deployment, &String, usize, Option<String>)> = Vec::new();
    for deployment in deployments.values() {
        for (location, &copies) in &deployment.copies {
            let group = kept
                .get(&(deployment.name.as_str(), location.as_str()))
                .copied()
                .unwrap_or_default();
            let limit = copies as usize + deployment.surge.of(copies) as usize;
            let room = limit.saturating_sub(group.up_to_date + group.outdated);
            let missing = (copies as usize).saturating_sub(group.up_to_date).min(room);
            let mut places = Placing {
                deployment,
                location,
                loads: &mut loads,
                ids: &mut ids,
                assignments: &mut assignments,
            };
            let placed = places.place_new(missing);
            if placed == missing {
                continue;
            }
            // No room beside the old replicas: replace them where they run.
            let wanted = (copies as usize).saturating_sub(group.up_to_date + placed);
            match places.replace_in_place(wanted, ready, reported) {
                InPlaceStep::Impossible { why } => {
                    shortfalls.push((*deployment, location, missing - placed, why));
                }
                InPlaceStep::Replaced {
                    count: 0,
                    all: true,
                } => {}
                InPlaceStep::Replaced { .. } => in_place.push((*deployment, location)),
            }
        }
    }

    // Reasons are written against the final plan, so reconciling the plan again yields
    // the same words.
    let unplaced = shortfalls
        .into_iter()
        .map(|(deployment, location, count, why)| {
            let mut reason = explain_shortfall(location, deployment, &loads, nodes);
            if let Some(why) = why {
                reason.push_str("; ");
                reason.push_str(&why);
            }
            Unplaced {
                deployment: deployment.name.clone(),
                location: location.clone(),
                count: u32::try_from(count).unwrap_or(u32::MAX),
                reason,
            }
        })
        .collect();
    let in_place = in_place
        .into_iter()
        .map(|(deployment, location)| {
            let copies = deployment.copies.get(location).copied().unwrap_or(0);
            InPlace {
                deployment: deployment.name.clone(),
                location: location.clone(),
                copies,
                max_unavailable: deployment.max_unavailable.of(copies),
                reason: explain_shortfall(location, deployment, &loads, nodes),
            }
        })
        .collect();
    assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
    Plan {
        assignments,
        unplaced,
        in_place,
    }
}

/// Deployments by name; the first of two with the same name wins.
fn by_name(deployments: &[Deployment]) -> BTreeMap<&str, &Deployment> {
    let mut named = BTreeMap::new();
    for deployment in deployments {
        named.entry(deployment.name.as_str()).or_insert(deployment);
    }
    named
}

/// How many current replicas of one deployment in one location were kept.
#[derive(Clone, Copy, Debug, Default)]
struct Kept {
    up_to_date: usize,
    outdated: usize,
}

/// The current assignments that stay as they are, and how many of each kind per
/// deployment and location.
fn keep_current<'d>(
    deployments: &BTreeMap<&'d str, &'d Deployment>,
    loads: &BTreeMap<&str, NodeLoad<'_>>,
    lost: &HashMap<&str, &str>,
    current: &'d [Assignment],
    ready: &HashSet<&str>,
) -> (Vec<Assignment>, BTreeMap<(&'d str, &'d str), Kept>) {
    #[derive(Default)]
    struct Group<'a> {
        up_to_date: Vec<&'a Assignment>,
        outdated: Vec<&'a Assignment>,
        stranded: Vec<&'a Assignment>,
    }
    let mut groups: BTreeMap<(&str, &str), Group<'_>> = BTreeMap::new();
    for assignment in current {
        let Some(deployment) = deployments.get(assignment.deployment.as_str()) else {
            continue;
        };
        let group = groups
            .entry((assignment.deployment.as_str(), assignment.location.as_str()))
            .or_default();
        let node_still_there = loads
            .get(assignment.node.as_str())
            .is_some_and(|load| load.location() == assignment.location);
        if !node_still_there {
            if lost.get(assignment.node.as_str()) == Some(&assignment.location.as_str()) {
                group.stranded.push(assignment);
            }
            continue;
        }
        if up_to_date(assignment, deployment) {
            group.up_to_date.push(assignment);
        } else {
            group.outdated.push(assignment);
        }
    }

    let mut seen_ids = HashSet::new();
    let mut kept = Vec::new();
    let mut counts = BTreeMap::new();
    for ((deployment, location), mut group) in groups {
        let wanted = deployments
            .get(deployment)
            .and_then(|d| d.copies.get(location))
            .map_or(0, |&copies| copies as usize);
        // Ready ones stay first: a node back from a partition whose replicas are still
        // starting does not push out ready replacements.
        group.up_to_date.sort_by_key(|a| {
            let (no_index, index, id) = surplus_order(&a.replica);
            (!ready.contains(a.replica.as_str()), no_index, index, id)
        });
        let up_to_date: Vec<&Assignment> = group
            .up_to_date
            .into_iter()
            .filter(|a| seen_ids.insert(a.replica.as_str()))
            .take(wanted)
            .collect();
        let ready_now = up_to_date
            .iter()
            .filter(|a| ready.contains(a.replica.as_str()))
            .count();
        // Ready outdated replicas serve until new ones take over; the others go first.
        group.outdated.sort_by_key(|a| {
            let (no_index, index, id) = surplus_order(&a.replica);
            (!ready.contains(a.replica.as_str()), no_index, index, id)
        });
        let outdated: Vec<&Assignment> = group
            .outdated
            .into_iter()
            .filter(|a| seen_ids.insert(a.replica.as_str()))
            .take(wanted.saturating_sub(ready_now))
            .collect();
        // Replicas on a lost node may well still serve where it is (a partition): they
        // stay assigned until replacements elsewhere are ready, so a node that comes
        // back keeps them and drops the replacements instead. They count for nothing
        // else: no capacity, no copies.
        group.stranded.sort_by_key(|a| surplus_order(&a.replica));
        let stranded = group
            .stranded
            .into_iter()
            .filter(|a| seen_ids.insert(a.replica.as_str()))
            .take(wanted.saturating_sub(ready_now));
        counts.insert(
            (deployment, location),
            Kept {
                up_to_date: up_to_date.len(),
                outdated: outdated.len(),
            },
        );
        kept.extend(
            up_to_date
                .into_iter()
                .chain(outdated)
                .chain(stranded)
                .cloned(),
        );
    }
    (kept, counts)
}

/// Where a deployment's replicas stand against what it asks for, per location: every
/// location it names, and any other where outdated replicas still run.
pub fn progress(
    deployment: &Deployment,
    assignments: &[Assignment],
    ready: &HashSet<&str>,
) -> Vec<RolloutLocation> {
    let mine: Vec<&Assignment> = assignments
        .iter()
        .filter(|a| a.deployment == deployment.name)
        .collect();
    let names: BTreeSet<&str> = deployment
        .copies
        .keys()
        .map(String::as_str)
        .chain(mine.iter().map(|a| a.location.as_str()))
        .collect();
    let mut locations: BTreeMap<&str, RolloutLocation> = names
        .into_iter()
        .map(|location| {
            let desired = deployment.copies.get(location).copied().unwrap_or(0);
            let progress = RolloutLocation {
                location: location.to_owned(),
                desired,
                updated: 0,
                ready: 0,
                outdated: 0,
            };
            (location, progress)
        })
        .collect();
    for a in mine {
        let Some(here) = locations.get_mut(a.location.as_str()) else {
            continue;
        };
        if up_to_date(a, deployment) {
            here.updated += 1;
            here.ready += u32::from(ready.contains(a.replica.as_str()));
        } else {
            here.outdated += 1;
        }
    }
    locations.into_values().collect()
}

/// Whether every location has all its copies up to date and ready, and nothing else.
pub fn rolled_out(progress: &[RolloutLocation]) -> bool {
    progress
        .iter()
        .all(|l| l.ready == l.desired && l.updated == l.desired && l.outdated == 0)
}

/// Whether a replica runs what its deployment asks for now.
pub fn up_to_date(assignment: &Assignment, deployment: &Deployment) -> bool {
    assignment.version == deployment.version
        && assignment.component == deployment.component
        && assignment.resources == deployment.resources
        && assignment.serve == deployment.serve
}

/// Sort key that puts the replicas to remove first at the end: low indices first, ids
/// without an index last.
fn surplus_order(replica: &str) -> (bool, u64, &str) {
    let index = replica
        .rsplit_once('-')
        .and_then(|(_, tail)| parse_index(tail));
    (index.is_none(), index.unwrap_or(0), replica)
}

/// A replica index: decimal digits only.
fn parse_index(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What one deployment in one location is placing into the plan.
struct Placing<'p, 'n> {
    deployment: &'p Deployment,
    location: &'p str,
    loads: &'p mut BTreeMap<&'n str, NodeLoad<'n>>,
    ids: &'p mut ReplicaIds,
    assignments: &'p mut Vec<Assignment>,
}

/// How replacing old replicas in place went.
#[derive(Debug, PartialEq, Eq)]
enum InPlaceStep {
    /// It cannot help here: no node would have room for a new replica even without
    /// its old ones (`why` is `None`), or `why` not.
    Impossible { why: Option<String> },
    /// `count` were replaced; `all` unless more wait for new replicas to get ready.
    Replaced { count: usize, all: bool },
}

impl<'n> Placing<'_, 'n> {
    /// Places up to `missing` new replicas; returns how many found a node.
    fn place_new(&mut self, missing: usize) -> usize {
        let deployment = self.deployment;
        // The location's nodes with room, best first. Placing one changes the rank of
        // the chosen node alone, so a heap gives each next node in O(log n): scanning
        // every node for every replica made a fleet-wide deploy quadratic.
        let mut ranked: BinaryHeap<Reverse<Rank<'n>>> = self
            .loads
            .iter()
            .filter(|(_, load)| {
                load.location() == self.location && load.fits(&deployment.resources)
            })
            .map(|(name, load)| Reverse(Rank::of(name, load, &deployment.name)))
            .collect();
        for placed in 0..missing {
            // Replicas of one deployment are alike: once one fits nowhere, none will.
            let Some(Reverse(best)) = ranked.pop() else {
                return placed;
            };
            let Some(load) = self.loads.get_mut(best.name) else {
                return placed;
            };
            let assignment = Assignment {
                replica: self.ids.allocate(&deployment.name, self.location),
                deployment: deployment.name.clone(),
                component: deployment.component.clone(),
                version: deployment.version,
                seq: deployment.seq,
                node: best.name.to_owned(),
                location: self.location.to_owned(),
                resources: deployment.resources,
                serve: deployment.serve,
            };
            load.add(&assignment);
            if load.fits(&deployment.resources) {
                ranked.push(Reverse(Rank::of(best.name, load, &deployment.name)));
            }
            self.assignments.push(assignment);
        }
        missing
    }

    /// Stops outdated replicas to start up to `wanted` new ones on the room they free,
    /// while the location keeps `copies - max_unavailable` ready replicas: outdated
    /// replicas that are not ready go first, then the highest indices.
    fn replace_in_place(
        &mut self,
        wanted: usize,
        ready: &HashSet<&str>,
        reported: &HashSet<&str>,
    ) -> InPlaceStep {
        // A replica that has not said how it is counts as serving: stopping it is never
        // free (a control plane that just started knows nothing yet).
        let serving = |id: &str| ready.contains(id) || !reported.contains(id);
        let deployment = self.deployment;
        let copies = deployment.copies.get(self.location).copied().unwrap_or(0);
        let max_unavailable = deployment.max_unavailable.of(copies) as usize;
        // Replicas stranded on lost nodes neither serve here nor free room: not counted.
        let loads = &*self.loads;
        let mine = |a: &Assignment| {
            a.deployment == deployment.name
                && a.location == self.location
                && loads.contains_key(a.node.as_str())
        };
        let (present, ready_now) =
            self.assignments
                .iter()
                .filter(|a| mine(a))
                .fold((0, 0), |(present, ready_now), a| {
                    let is_ready = serving(a.replica.as_str());
                    (present + 1, ready_now + usize::from(is_ready))
                });
        let keep_ready = (copies as usize).saturating_sub(max_unavailable);
        let mut budget = ready_now.saturating_sub(keep_ready);

        // Per node, its outdated replicas in the order they would go.
        let mut by_node: BTreeMap<String, Vec<Assignment>> = BTreeMap::new();
        for a in self
            .assignments
            .iter()
            .filter(|a| mine(a) && !up_to_date(a, deployment))
        {
            by_node.entry(a.node.clone()).or_default().push(a.clone());
        }
        for outdated in by_node.values_mut() {
            outdated.sort_by(|a, b| {
                let is_ready = |x: &Assignment| serving(x.replica.as_str());
                is_ready(a)
                    .cmp(&is_ready(b))
                    .then_with(|| surplus_order(&b.replica).cmp(&surplus_order(&a.replica)))
            });
        }
        if !by_node.is_empty() && present < copies as usize {
            // It could never be rolled out completely, so it is not rolled by halves.
            return InPlaceStep::Impossible {
                why: Some(format!(
                    "replacing the old replicas in place waits until all {copies} copies are placed ({present} are)"
                )),
            };
        }
        // The fewest ready replicas that must stop at once on one node to make room.
        let ready_cost = |outdated: &[Assignment]| {
            outdated
                .iter()
                .filter(|a| serving(a.replica.as_str()))
                .count()
        };
        let fewest = by_node
            .iter()
            .filter_map(|(node, outdated)| {
                let count = self.room_without(node, outdated)?;
                Some(ready_cost(&outdated[..count]))
            })
            .min();
        match fewest {
            None => return InPlaceStep::Impossible { why: None },
            Some(needs) if needs > max_unavailable => {
                return InPlaceStep::Impossible {
                    why: Some(format!(
                        "replacing the old replicas in place would take {needs} out of service at once, more than --max-unavailable {} allows",
                        deployment.max_unavailable
                    )),
                }
            }
            Some(_) => {}
        }

        let mut replaced = 0;
        while replaced < wanted {
            // The first node where the fewest old replicas make room, within the budget.
            let next = by_node.iter().find_map(|(node, outdated)| {
                let count = self.room_without(node, outdated)?;
                let cost = ready_cost(&outdated[..count]);
                (cost <= budget).then(|| (node.clone(), count, cost))
            });
            let Some((node, count, cost)) = next else {
                break;
            };
            let Some(outdated) = by_node.get_mut(&node) else {
                break;
            };
            let stopped: Vec<Assignment> = outdated.drain(..count).collect();
            for old in &stopped {
                self.assignments.retain(|a| a.replica != old.replica);
                if let Some(load) = self.loads.get_mut(node.as_str()) {
                    load.remove(old);
                }
            }
            budget -= cost;
            if self.place_new(1) == 0 {
                break;
            }
            replaced += 1;
        }
        InPlaceStep::Replaced {
            count: replaced,
            all: replaced == wanted,
        }
    }

    /// How many of `outdated` (a prefix, in order) must stop on `node` before a new
    /// replica fits there; `None` if not even all of them make room.
    fn room_without(&mut self, node: &str, outdated: &[Assignment]) -> Option<usize> {
        let need = self.deployment.resources;
        let load = self.loads.get_mut(node)?;
        let mut count = None;
        for (i, old) in outdated.iter().enumerate() {
            load.remove(old);
            if load.fits(&need) {
                count = Some(i + 1);
                for back in &outdated[..=i] {
                    load.add(back);
                }
                break;
            }
        }
        if count.is_none() {
            for back in outdated {
                load.add(back);
            }
        }
        count
    }
}

/// How well a node suits the next replica of a deployment; the least is best: fewest
/// replicas of that deployment (spread), then the most free CPU, then by name.
#[derive(Debug)]
struct Rank<'n> {
    replicas: u32,
    free_cpus: f64,
    name: &'n str,
}

impl<'n> Rank<'n> {
    fn of(name: &'n str, load: &NodeLoad<'_>, deployment: &str) -> Self {
        Rank {
            replicas: load.replicas_of(deployment),
            free_cpus: load.free().cpus,
            name,
        }
    }
}

impl Ord for Rank<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.replicas
            .cmp(&other.replicas)
            .then_with(|| other.free_cpus.total_cmp(&self.free_cpus))
            .then_with(|| self.name.cmp(other.name))
    }
}

impl PartialOrd for Rank<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Rank<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Rank<'_> {}

fn add_to_node(loads: &mut BTreeMap<&str, NodeLoad<'_>>, assignment: &Assignment) {
    if let Some(load) = loads.get_mut(assignment.node.as_str()) {
        load.add(assignment);
    }
}

/// Why copies of a deployment found no node in `location`.
fn explain_shortfall(
    location: &str,
    deployment: &Deployment,
    loads: &BTreeMap<&str, NodeLoad<'_>>,
    nodes: &[Node],
) -> String {
    let need = &deployment.resources;
    let ready_here: Vec<&NodeLoad<'_>> = loads
        .values()
        .filter(|load| load.location() == location)
        .collect();
    if ready_here.is_empty() {
        no_ready_node(location, loads, nodes)
    } else {
        not_enough_capacity(location, need, &ready_here)
    }
}

fn no_ready_node(location: &str, loads: &BTreeMap<&str, NodeLoad<'_>>, nodes: &[Node]) -> String {
    let mut reason = format!("no ready node in location {location:?}");
    let lost = nodes
        .iter()
        .filter(|n| n.spec.location == location && n.state == NodeState::Lost)
        .count();
    if lost > 0 {
        reason.push_str(&format!(" ({lost} lost)"));
    }
    let ready_locations: BTreeSet<&str> = loads.values().map(NodeLoad::location).collect();
    if ready_locations.is_empty() {
        reason.push_str("; no node is ready in any location");
    } else {
        let quoted: Vec<String> = ready_locations.iter().map(|l| format!("{l:?}")).collect();
        reason.push_str("; locations with ready nodes: ");
        reason.push_str(&quoted.join(", "));
    }
    reason
}

fn not_enough_capacity(location: &str, need: &Resources, ready_here: &[&NodeLoad<'_>]) -> String {
    let needs = format!(
        "needs {} cpus, {} memory, {} gpus per replica",
        cpus_text(need.cpus),
        memory_text(need.memory_bytes),
        need.gpus
    );
    // The node closest to fitting: fewest resources short, then most free CPU.
    let best = ready_here.iter().min_by(|a, b| {
        a.shortages(need)
            .len()
            .cmp(&b.shortages(need).len())
            .then_with(|| b.free().cpus.total_cmp(&a.free().cpus))
            .then_with(|| a.name().cmp(b.name()))
    });
    let Some(best) = best else {
        return format!("not enough capacity in location {location:?}: {needs}");
    };
    let which = if ready_here.len() == 1 {
        "the only ready node".to_owned()
    } else {
        format!("the best of {} ready nodes", ready_here.len())
    };
    let free = best.free();
    let mut reason = format!(
        "not enough capacity in location {location:?}: {needs}; {which}, {:?}, has {} cpus, {} memory, {} gpus free",
        best.name(),
        cpus_text(free.cpus),
        memory_text(free.memory_bytes),
        free.gpus
    );
    let short = best.shortages(need);
    if !short.is_empty() {
        reason.push_str(&format!(" (short of {})", short.join(" and ")));
    }
    reason
}

/// Cores with at most two decimals: `2`, `0.5`, `1.25`.
fn cpus_text(cpus: f64) -> String {
    let rounded = (cpus.max(0.0) * 100.0).round() / 100.0;
    format!("{rounded}")
}

/// `2.0 GiB` from one GiB up, `512 MiB` below.
fn memory_text(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.0} MiB", bytes / MIB)
    }
}

/// Resources in use on a node, or free on it.
#[derive(Clone, Copy, Debug, Default)]
struct Amount {
    cpus: f64,
    memory_bytes: u64,
    gpus: u32,
}

/// A Ready node and what the plan has put on it so far.
struct NodeLoad<'n> {
    node: &'n Node,
    used: Amount,
    replicas_by_deployment: HashMap<String, u32>,
}

fn ready_node_loads(nodes: &[Node]) -> BTreeMap<&str, NodeLoad<'_>> {
    let mut loads = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.state == NodeState::Ready) {
        loads.entry(node.spec.name.as_str()).or_insert(NodeLoad {
            node,
            used: Amount::default(),
            replicas_by_deployment: HashMap::new(),
        });
    }
    loads
}

impl NodeLoad<'_> {
    fn name(&self) -> &str {
        &self.node.spec.name
    }

    fn location(&self) -> &str {
        &self.node.spec.location
    }

    fn free(&self) -> Amount {
        let spec = &self.node.spec;
        Amount {
            cpus: spec.cpus - self.used.cpus,
            memory_bytes: spec.memory_bytes.saturating_sub(self.used.memory_bytes),
            gpus: spec.gpus.saturating_sub(self.used.gpus),
        }
    }

    /// Which resources are too short for one more replica needing `need`.
    fn shortages(&self, need: &Resources) -> Vec<&'static str> {
        let free = self.free();
        let mut short = Vec::new();
        if need.cpus > free.cpus + CPU_EPSILON {
            short.push("cpus");
        }
        if need.memory_bytes > free.memory_bytes {
            short.push("memory");
        }
        if need.gpus > free.gpus {
            short.push("gpus");
        }
        short
    }

    fn fits(&self, need: &Resources) -> bool {
        self.shortages(need).is_empty()
    }

    fn replicas_of(&self, deployment: &str) -> u32 {
        self.replicas_by_deployment
            .get(deployment)
            .copied()
            .unwrap_or(0)
    }

    fn remove(&mut self, assignment: &Assignment) {
        let need = &assignment.resources;
        self.used.cpus -= need.cpus;
        self.used.memory_bytes = self.used.memory_bytes.saturating_sub(need.memory_bytes);
        self.used.gpus = self.used.gpus.saturating_sub(need.gpus);
        if let Some(count) = self.replicas_by_deployment.get_mut(&assignment.deployment) {
            *count = count.saturating_sub(1);
        }
    }

    fn add(&mut self, assignment: &Assignment) {
        let need = &assignment.resources;
        self.used.cpus += need.cpus;
        self.used.memory_bytes = self.used.memory_bytes.saturating_add(need.memory_bytes);
        self.used.gpus = self.used.gpus.saturating_add(need.gpus);
        *self
            .replicas_by_deployment
            .entry(assignment.deployment.clone())
            .or_insert(0) += 1;
    }
}

/// Hands out replica ids that neither `current` nor the plan so far has used.
struct ReplicaIds {
    taken: HashSet<String>,
    /// Next index to try, per `{deployment}-{location}-` prefix.
    next: HashMap<String, u64>,
}

impl ReplicaIds {
    fn new(current: &[Assignment]) -> Self {
        Self {
            taken: current.iter().map(|a| a.replica.clone()).collect(),
            next: HashMap::new(),
        }
    }

    fn allocate(&mut self, deployment: &str, location: &str) -> String {
        // Keyed by the prefix, not the pair: deployment "a-b" in "c" and deployment "a"
        // in "b-c" spell the same ids, so they must share one counter.
        let prefix = format!("{deployment}-{location}-");
        let mut index = match self.next.get(&prefix) {
            Some(&index) => index,
            None => self.first_index(&prefix),
        };
        loop {
            let id = format!("{prefix}{index}");
            index = index.wrapping_add(1);
            if self.taken.insert(id.clone()) {
                self.next.insert(prefix, index);
                return id;
            }
        }
    }

    /// One more than the highest index taken under `prefix`, or 0.
    fn first_index(&self, prefix: &str) -> u64 {
        self.taken
            .iter()
            .filter_map(|id| id.strip_prefix(prefix).and_then(parse_index))
            .max()
            .map_or(0, |highest| highest.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests;
