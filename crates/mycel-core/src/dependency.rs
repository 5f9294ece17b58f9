//! Dependencies between components: resolving a manifest's `[dependencies]` to exact
//! versions, and checking the tree those versions form.
//!
//! The rules, checked when a version is created:
//!
//! - every dependency names a component the registry holds, and a version of it that
//!   exists (`"latest"` is its newest version at that moment);
//! - a component does not depend on itself, directly or through others;
//! - the whole tree (the dependencies, theirs, and so on, as each version recorded them)
//!   holds one version of each component, because a Python process can import only one
//!   module of a name: two versions of one component in a tree is a conflict.
//!
//! Every version can only name versions that existed before it, and its id covers
//! theirs, so the graph of versions has no cycle; a cycle between *components* shows as
//! the pushed component (or another one) turning up again below itself, in another
//! version. The checks read the registry through [`VersionLookup`], so they run on plain
//! data in tests and over the store in the control plane.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::manifest::{DependencyRef, MANIFEST_FILE};
use crate::version::{ResolvedDependency, Version, VersionId};

/// What resolution reads from the registry.
pub trait VersionLookup {
    /// Why the registry could not answer.
    type Error;
    /// The newest version of `component`, if it has any.
    fn newest(&self, component: &str) -> Result<Option<Version>, Self::Error>;
    /// `component@seq`.
    fn by_seq(&self, component: &str, seq: u64) -> Result<Option<Version>, Self::Error>;
    /// The version with this id, of whatever component.
    fn by_id(&self, id: &VersionId) -> Result<Option<Version>, Self::Error>;
}

/// Versions in the order they were pushed, as a registry: the newest of a component is
/// the last of its name (tests and fuzzing resolve against one in memory).
impl VersionLookup for [Version] {
    type Error = std::convert::Infallible;

    fn newest(&self, component: &str) -> Result<Option<Version>, Self::Error> {
        Ok(self
            .iter()
            .rev()
            .find(|v| v.component == component)
            .cloned())
    }

    fn by_seq(&self, component: &str, seq: u64) -> Result<Option<Version>, Self::Error> {
        Ok(self
            .iter()
            .find(|v| v.component == component && v.seq == seq)
            .cloned())
    }

    fn by_id(&self, id: &VersionId) -> Result<Option<Version>, Self::Error> {
        Ok(self.iter().find(|v| &v.id == id).cloned())
    }
}

/// Why a version's dependencies cannot be resolved or do not form a valid tree. The
/// messages name the manifest key, what is wrong and what is expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// `[dependencies]` names the component itself.
    #[error("{MANIFEST_FILE}: [dependencies].{0}: a component cannot depend on itself; expected other components' names")]
    OnItself(String),
    /// No component of that name has been pushed.
    #[error("{MANIFEST_FILE}: [dependencies].{0}: there is no component {0:?}; expected the name of a pushed component: push it first, or remove the entry")]
    NoComponent(String),
    /// The component exists but not the version asked for.
    #[error("{MANIFEST_FILE}: [dependencies].{dependency}: {dependency} has no version {wanted}; expected \"latest\", a version number from 1 to {newest} or the id of one of its versions")]
    NoVersion {
        /// The dependency.
        dependency: String,
        /// The version asked for, as written.
        wanted: String,
        /// Its newest sequence number.
        newest: u64,
    },
    /// The component turns up below itself.
    #[error("{MANIFEST_FILE}: [dependencies]: {component} would depend on itself: {}; expected no cycle between components: remove one of these dependencies", path.join(" -> "))]
    Cycle {
        /// The component that depends on itself.
        component: String,
        /// From the pushed component down to where the cycle closes, as `name@seq`.
        path: Vec<String>,
    },
    /// Two versions of one component in the tree.
    #[error("{MANIFEST_FILE}: [dependencies]: {first} (needed by {first_by}) and {second} (needed by {second_by}) would both be imported; expected one version of each component: push {second_by_name} again so that it resolves {component} anew (`mycel push --cascade` on {component} does this for deployments), or pin {component} to version {second_seq}")]
    Conflict {
        /// The component of which two versions were found.
        component: String,
        /// The version reached first, `name@seq`.
        first: String,
        /// Who needs it.
        first_by: String,
        /// The other version, `name@seq`.
        second: String,
        /// Who needs that one.
        second_by: String,
        /// The component of `second_by`, without its version.
        second_by_name: String,
        /// The sequence number of `second`.
        second_seq: u64,
    },
    /// A recorded dependency points at a version the registry does not hold.
    #[error("{label} ({id}), recorded as a dependency of {by}, is not in the registry")]
    Unknown {
        /// `name@seq` as recorded.
        label: String,
        /// Its id.
        id: VersionId,
        /// The version that records it.
        by: String,
    },
}

/// A failed resolution: the dependencies are wrong, or the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError<E> {
    /// The dependencies are wrong (boxed: the error is large and rare).
    #[error(transparent)]
    Dependency(Box<DependencyError>),
    /// The registry could not be read.
    #[error("{0}")]
    Lookup(E),
}

impl<E> From<DependencyError> for ResolveError<E> {
    fn from(e: DependencyError) -> Self {
        ResolveError::Dependency(Box::new(e))
    }
}

impl fmt::Display for DependencyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DependencyRef::Latest => f.write_str("latest"),
            DependencyRef::Seq(seq) => write!(f, "{seq}"),
            DependencyRef::Id(id) => write!(f, "{id}"),
        }
    }
}

/// Resolves `wanted` (a manifest's `[dependencies]` of `component`) to exact versions
/// and checks the tree they form. Returns the direct dependencies, sorted by name.
pub fn resolve<L: VersionLookup + ?Sized>(
    component: &str,
    wanted: &BTreeMap<String, DependencyRef>,
    lookup: &L,
) -> Result<Vec<ResolvedDependency>, ResolveError<L::Error>> {
    let mut direct = Vec::with_capacity(wanted.len());
    for (name, reference) in wanted {
        if name == component {
            return Err(DependencyError::OnItself(name.clone()).into());
        }
        let newest = lookup
            .newest(name)
            .map_err(ResolveError::Lookup)?
            .ok_or_else(|| DependencyError::NoComponent(name.clone()))?;
        let found = match reference {
            DependencyRef::Latest => Some(newest.clone()),
            DependencyRef::Seq(seq) => lookup.by_seq(name, *seq).map_err(ResolveError::Lookup)?,
            DependencyRef::Id(id) => lookup
                .by_id(id)
                .map_err(ResolveError::Lookup)?
                .filter(|v| &v.component == name),
        };
        let version = found.ok_or_else(|| DependencyError::NoVersion {
            dependency: name.clone(),
            wanted: reference.to_string(),
            newest: newest.seq,
        })?;
        direct.push(ResolvedDependency::on(&version));
    }
    tree(component, &direct, lookup)?;
    Ok(direct)
}

/// Every version a version of `component` with these `direct` dependencies needs,
/// breadth first (its direct dependencies by name, then theirs), each once. Fails on a
/// cycle back to `component` or to any other component, and on two versions of one
/// component.
pub fn tree<L: VersionLookup + ?Sized>(
    component: &str,
    direct: &[ResolvedDependency],
    lookup: &L,
) -> Result<Vec<ResolvedDependency>, ResolveError<L::Error>> {
    // Each entry carries the path from the root to the version that needs it.
    let mut queue: VecDeque<(ResolvedDependency, Vec<String>)> = direct
        .iter()
        .map(|d| (d.clone(), vec![component.to_owned()]))
        .collect();
    let mut seen: BTreeMap<String, (ResolvedDependency, String)> = BTreeMap::new();
    let mut out = Vec::new();
    while let Some((dependency, path)) = queue.pop_front() {
        let name = &dependency.component;
        let closes_cycle = name == component
            || path
                .iter()
                .skip(1)
                .any(|label| label.split('@').next() == Some(name.as_str()));
        if closes_cycle {
            let mut path = path;
            path.push(dependency.label());
            return Err(DependencyError::Cycle {
                component: name.clone(),
                path,
            }
            .into());
        }
        let by = path.last().cloned().unwrap_or_default();
        if let Some((first, first_by)) = seen.get(name) {
            if first.id == dependency.id {
                continue;
            }
            return Err(DependencyError::Conflict {
                component: name.clone(),
                first: first.label(),
                first_by: first_by.clone(),
                second: dependency.label(),
                second_by_name: by.split('@').next().unwrap_or_default().to_owned(),
                second_by: by,
                second_seq: dependency.seq,
            }
            .into());
        }
        let version = lookup
            .by_id(&dependency.id)
            .map_err(ResolveError::Lookup)?
            .ok_or_else(|| DependencyError::Unknown {
                label: dependency.label(),
                id: dependency.id,
                by: by.clone(),
            })?;
        let mut below = path.clone();
        below.push(dependency.label());
        for next in &version.dependencies {
            queue.push_back((next.clone(), below.clone()));
        }
        seen.insert(name.clone(), (dependency.clone(), by));
        out.push(dependency);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobHash, ComponentPath, FileEntry, FileMode};

    /// An in-memory registry: versions pushed in order, numbered per component.
    #[derive(Default)]
    struct Memory {
        versions: Vec<Version>,
    }

    impl Memory {
        /// Pushes a version of `component` with `deps` resolved now, as the control
        /// plane does; returns it, or the resolution error (unboxed: tests compare it).
        #[allow(clippy::result_large_err)]
        fn push(
            &mut self,
            component: &str,
            content: &str,
            deps: &[(&str, DependencyRef)],
        ) -> Result<Version, DependencyError> {
            let wanted: BTreeMap<String, DependencyRef> = deps
                .iter()
                .map(|(n, r)| (n.to_string(), r.clone()))
                .collect();
            let dependencies = match resolve(component, &wanted, &self.versions[..]) {
                Ok(d) => d,
                Err(ResolveError::Dependency(e)) => return Err(*e),
                Err(ResolveError::Lookup(never)) => match never {},
            };
            let files = vec![FileEntry {
                path: ComponentPath::new("model.py").unwrap(),
                hash: BlobHash::of(format!("{component}:{content}").as_bytes()),
                size: 1,
                mode: FileMode::Regular,
            }];
            let seq = self
                .versions
                .iter()
                .filter(|v| v.component == component)
                .count() as u64
                + 1;
            let version = Version {
                id: VersionId::with_dependencies(&files, &dependencies),
                component: component.into(),
                seq,
                files,
                total_bytes: 1,
                created_at_ms: 0,
                pushed_by: "test".into(),
                description: String::new(),
                dependencies,
            };
            self.versions.push(version.clone());
            Ok(version)
        }
    }

    use DependencyRef::{Latest, Seq};

    fn labels(deps: &[ResolvedDependency]) -> Vec<String> {
        deps.iter().map(ResolvedDependency::label).collect()
    }

    #[test]
    fn latest_number_and_id_resolve_to_exact_versions() {
        let mut r = Memory::default();
        let a1 = r.push("a", "1", &[]).unwrap();
        r.push("a", "2", &[]).unwrap();
        r.push("b", "1", &[]).unwrap();
        let m = r.push("m", "1", &[("a", Seq(1)), ("b", Latest)]).unwrap();
        assert_eq!(labels(&m.dependencies), ["a@1", "b@1"]);
        let by_id = r
            .push("n", "1", &[("a", DependencyRef::Id(a1.id))])
            .unwrap();
        assert_eq!(by_id.dependencies, vec![ResolvedDependency::on(&a1)]);
        let latest = r.push("o", "1", &[("a", Latest)]).unwrap();
        assert_eq!(labels(&latest.dependencies), ["a@2"]);
    }

    #[test]
    fn missing_components_and_versions_are_named() {
        let mut r = Memory::default();
        let b1 = r.push("b", "1", &[]).unwrap();
        let e = r.push("m", "1", &[("a", Latest)]).unwrap_err();
        assert_eq!(e, DependencyError::NoComponent("a".into()));
        let text = e.to_string();
        assert!(text.starts_with("mycel.toml: [dependencies].a: "), "{text}");
        assert!(text.contains("push it first"), "{text}");

        let e = r.push("m", "1", &[("b", Seq(3))]).unwrap_err().to_string();
        assert!(e.contains("b has no version 3"), "{e}");
        assert!(e.contains("from 1 to 1"), "{e}");

        // An id of another component is no version of this one.
        r.push("c", "1", &[]).unwrap();
        let e = r
            .push("m", "1", &[("c", DependencyRef::Id(b1.id))])
            .unwrap_err();
        assert!(
            matches!(&e, DependencyError::NoVersion { wanted, .. } if wanted == &b1.id.to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_component_cannot_depend_on_itself() {
        let mut r = Memory::default();
        r.push("m", "1", &[]).unwrap();
        let e = r.push("m", "2", &[("m", Latest)]).unwrap_err();
        assert_eq!(e, DependencyError::OnItself("m".into()));
        assert!(e.to_string().contains("cannot depend on itself"), "{e}");
    }

    #[test]
    fn cycles_through_resolved_versions_are_refused() {
        let mut r = Memory::default();
        r.push("a", "1", &[]).unwrap();
        r.push("b", "1", &[("a", Latest)]).unwrap();
        r.push("c", "1", &[("b", Latest)]).unwrap();
        // a -> c@1 -> b@1 -> a@1: a would import an older a.
        let e = r.push("a", "2", &[("c", Latest)]).unwrap_err();
        assert_eq!(
            e,
            DependencyError::Cycle {
                component: "a".into(),
                path: vec!["a".into(), "c@1".into(), "b@1".into(), "a@1".into()],
            }
        );
        let text = e.to_string();
        assert!(text.contains("a -> c@1 -> b@1 -> a@1"), "{text}");
        assert!(text.contains("expected no cycle"), "{text}");
        // Nothing was stored, and a direct two-way cycle is refused the same way.
        assert_eq!(r.versions[..].newest("a").unwrap().unwrap().seq, 1);
        let e = r.push("a", "2", &[("b", Latest)]).unwrap_err();
        assert!(matches!(e, DependencyError::Cycle { .. }), "{e}");
    }

    #[test]
    fn two_versions_of_one_component_in_a_tree_conflict() {
        let mut r = Memory::default();
        r.push("x", "1", &[]).unwrap();
        r.push("c", "1", &[("x", Latest)]).unwrap();
        r.push("x", "2", &[]).unwrap();
        // m wants x@2 directly, but c@1 was built against x@1.
        let e = r
            .push("m", "1", &[("x", Latest), ("c", Latest)])
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("x@2 (needed by m) and x@1 (needed by c@1)"),
            "{text}"
        );
        assert!(text.contains("push c again"), "{text}");
        assert!(text.contains("pin x to version 1"), "{text}");
        // Pinning resolves it; so does c resolving x anew.
        r.push("m", "1", &[("x", Seq(1)), ("c", Latest)]).unwrap();
        r.push("c", "1", &[("x", Latest)]).unwrap();
        let m = r.push("m", "2", &[("x", Latest), ("c", Latest)]).unwrap();
        assert_eq!(labels(&m.dependencies), ["c@2", "x@2"]);
    }

    #[test]
    fn tree_is_breadth_first_and_lists_shared_versions_once() {
        let mut r = Memory::default();
        r.push("base", "1", &[]).unwrap();
        r.push("left", "1", &[("base", Latest)]).unwrap();
        r.push("right", "1", &[("base", Latest)]).unwrap();
        let top = r
            .push("top", "1", &[("right", Latest), ("left", Latest)])
            .unwrap();
        let all = tree("top", &top.dependencies, &r.versions[..]).unwrap();
        assert_eq!(labels(&all), ["left@1", "right@1", "base@1"]);
        assert!(tree("top", &[], &r.versions[..]).unwrap().is_empty());
    }

    #[test]
    fn a_recorded_dependency_missing_from_the_registry_is_named() {
        let r = Memory::default();
        let ghost = ResolvedDependency {
            component: "ghost".into(),
            seq: 4,
            id: VersionId(BlobHash::of(b"ghost")),
        };
        let Err(ResolveError::Dependency(e)) = tree("m", &[ghost], &r.versions[..]) else {
            panic!("expected an error");
        };
        assert!(e.to_string().contains("ghost@4"), "{e}");
    }
}
