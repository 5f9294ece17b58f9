//! The registry: turns uploaded blobs and a file list into an immutable version.
//!
//! Everything a client sends is checked again here: names, paths, that each blob is
//! stored with the size claimed, and that the manifest parses and matches the files.
//!
//! A manifest's `[dependencies]` are resolved here, when the version is created: each
//! to an exact version (`"latest"` to the dependency's newest version at that moment),
//! recorded in the version and covered by its id (`mycel_core::version`), after the
//! checks of `mycel_core::dependency` (the components and versions exist, no cycle, one
//! version of each component in the tree). So pushing unchanged source after a
//! dependency changed creates a new version that imports the new dependency, and
//! pushing it again returns that version. [`rebuild_version`] does the same for a
//! stored version without its source, and [`dependents`] finds the deployments that
//! import a component: `mycel push --cascade` is built from the two.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mycel_core::api::{DependentDeployment, RebuildResponse};
use mycel_core::dependency::{self, DependencyError, ResolveError, VersionLookup};
use mycel_core::manifest::{validate_name, DependencyRef, ManifestError, MANIFEST_FILE};
use mycel_core::signing::{self, HashAlgorithm, Signature, SignatureError, SIGNATURE_FILE};
use mycel_core::version::{normalize_file_list, FileListError};
use mycel_core::{
    BlobHash, ErrorCode, FileEntry, Manifest, ResolvedDependency, Version, VersionId,
};

use crate::blobs::BlobStore;
use crate::store::{Store, StoreError};

/// Why a version was not created or found.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The component name in the URL is not a valid name.
    #[error("component {0}")]
    InvalidName(String),
    /// The file list cannot form a directory.
    #[error(transparent)]
    FileList(#[from] FileListError),
    /// The file list names blobs the server lacks.
    #[error("{} blob(s) are not on the server, upload them first: {}", .0.len(), list(.0))]
    MissingBlobs(Vec<BlobHash>),
    /// A file's claimed size differs from its stored blob.
    #[error("file {path:?} claims {claimed} bytes but blob {hash} has {actual}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Its blob.
        hash: BlobHash,
        /// The size in the request.
        claimed: u64,
        /// The size stored.
        actual: u64,
    },
    /// No `mycel.toml` at the root.
    #[error("the file list has no {MANIFEST_FILE}; expected one at the component root")]
    NoManifest,
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest's `[dependencies]` cannot be resolved or form no valid tree.
    #[error(transparent)]
    Dependency(#[from] Box<DependencyError>),
    /// The manifest names another component than the URL.
    #[error("{MANIFEST_FILE}: [component].name is {in_manifest:?} but the version was pushed to {in_url:?}")]
    NameMismatch {
        /// From the manifest.
        in_manifest: String,
        /// From the URL.
        in_url: String,
    },
    /// No such component or version.
    #[error("{0} not found")]
    NotFound(String),
    /// No component of that name has been pushed.
    #[error("no component {name:?} has been pushed{}; pushed components: {}. Push a component directory with `mycel push DIR` (`mycel init NAME` makes one)", closest.as_ref().map(|c| format!(" (did you mean {c:?}?)")).unwrap_or_default(), if known.is_empty() { "none yet".to_owned() } else { known.join(", ") })]
    NoComponent {
        /// The name asked for.
        name: String,
        /// The pushed component whose name is nearest, if one is near.
        closest: Option<String>,
        /// Pushed components, the first few.
        known: Vec<String>,
    },
    /// The component has no such version.
    #[error("{name} has no version {reference}; its versions are 1 to {newest} (`mycel versions {name}` lists them)")]
    NoVersion {
        /// The component.
        name: String,
        /// The version asked for.
        reference: String,
        /// Its newest sequence number.
        newest: u64,
    },
    /// A version reference that is neither a number, `latest` nor an id.
    #[error("version {0:?} is not a version; expected a number, \"latest\" or a 64-hex-digit id")]
    BadRef(String),
    /// Only signed versions may be deployed, and this one's signature is absent or
    /// does not cover its files.
    #[error("{version} cannot be deployed here: only signed versions are ({source})")]
    NotSigned {
        /// The version.
        version: String,
        /// What is wrong with its signature.
        source: SignatureError,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob store failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

fn list(hashes: &[BlobHash]) -> String {
    let shown: Vec<String> = hashes.iter().take(5).map(|h| h.short()).collect();
    let more = hashes.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl RegistryError {
    /// The API error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::InvalidName(_)
            | RegistryError::FileList(_)
            | RegistryError::BadRef(_) => ErrorCode::InvalidRequest,
            RegistryError::SizeMismatch { .. } => ErrorCode::InvalidRequest,
            RegistryError::MissingBlobs(_) => ErrorCode::MissingBlobs,
            RegistryError::NoManifest
            | RegistryError::Manifest(_)
            | RegistryError::Dependency(_)
            | RegistryError::NameMismatch { .. } => ErrorCode::InvalidManifest,
            RegistryError::NotFound(_)
            | RegistryError::NoComponent { .. }
            | RegistryError::NoVersion { .. } => ErrorCode::NotFound,
            RegistryError::NotSigned { .. } => ErrorCode::Forbidden,
            RegistryError::Store(_) | RegistryError::Io(_) => ErrorCode::Internal,
        }
    }
}

/// Runs a store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError::Corrupt(format!("store task failed: {e}")))?
}

/// Creates `name`'s version from `files`, or returns the identical one pushed before.
pub async fn create_version(
    store: &Arc<dyn Store>,
    blobs: &BlobStore,
    name: &str,
    files: Vec<FileEntry>,
    pushed_by: &str,
    now_ms: u64,
) -> Result<(Version, bool), RegistryError> {
    validate_name(name).map_err(RegistryError::InvalidName)?;
    let files = normalize_file_list(files)?;

    let sizes = blobs.sizes(files.iter().map(|f| f.hash).collect()).await?;
    let mut missing = Vec::new();
    for (file, size) in files.iter().zip(sizes) {
        match size {
            None => missing.push(file.hash),
            Some(actual) if actual != file.size => {
                return Err(RegistryError::SizeMismatch {
                    path: file.path.to_string(),
                    hash: file.hash,
                    claimed: file.size,
                    actual,
                })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let mut named = std::collections::HashSet::new();
        missing.retain(|hash| named.insert(*hash));
        return Err(RegistryError::MissingBlobs(missing));
    }

    let manifest_entry = files
        .iter()
        .find(|f| f.path.as_str() == MANIFEST_FILE)
        .ok_or(RegistryError::NoManifest)?;
    let text = blobs
        .read(&manifest_entry.hash)
        .await?
        .ok_or_else(|| RegistryError::MissingBlobs(vec![manifest_entry.hash]))?;
    let text = String::from_utf8(text).map_err(|_| ManifestError {
        file: MANIFEST_FILE.into(),
        key: None,
        message: "is not UTF-8 text".into(),
    })?;
    let manifest = Manifest::parse(&text)?;
    if manifest.component.name != name {
        return Err(RegistryError::NameMismatch {
            in_manifest: manifest.component.name,
            in_url: name.to_owned(),
        });
    }
    let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    manifest.check_files(|p| paths.contains(p))?;

    let version = Version {
        id: VersionId::of(&files),
        component: name.to_owned(),
        seq: 0,
        total_bytes: files.iter().map(|f| f.size).sum(),
        files,
        created_at_ms: now_ms,
        pushed_by: pushed_by.to_owned(),
        description: manifest.component.description,
        dependencies: Vec::new(),
    };
    insert_resolved(store, version, manifest.dependencies, BTreeMap::new()).await
}

/// Resolves `wanted` for `version`, names it by its files and resolved dependencies,
/// and stores it (or returns the identical version stored before). `rebuilt` holds
/// versions that `"latest"` must mean instead of the newest one (see
/// [`rebuild_version`]).
async fn insert_resolved(
    store: &Arc<dyn Store>,
    mut version: Version,
    wanted: BTreeMap<String, DependencyRef>,
    rebuilt: BTreeMap<String, Version>,
) -> Result<(Version, bool), RegistryError> {
    // Resolution and insertion are two transactions: a dependency pushed in between
    // is simply not the one resolved, which a later push or rebuild picks up.
    Ok(blocking(store, move |s| {
        let lookup = StoreLookup { store: s, rebuilt };
        let resolved = match dependency::resolve(&version.component, &wanted, &lookup) {
            Ok(resolved) => resolved,
            Err(ResolveError::Lookup(e)) => return Err(e),
            Err(ResolveError::Dependency(e)) => return Ok(Err(e)),
        };
        version.id = VersionId::with_dependencies(&version.files, &resolved);
        version.dependencies = resolved;
        s.insert_version(version).map(Ok)
    })
    .await??)
}

/// The store as dependency resolution reads it, with rebuilt versions standing in for
/// the newest ones.
struct StoreLookup<'a> {
    store: &'a dyn Store,
    rebuilt: BTreeMap<String, Version>,
}

impl VersionLookup for StoreLookup<'_> {
    type Error = StoreError;

    fn newest(&self, component: &str) -> Result<Option<Version>, StoreError> {
        match self.rebuilt.get(component) {
            Some(version) => Ok(Some(version.clone())),
            None => self.store.newest_version(component),
        }
    }

    fn by_seq(&self, component: &str, seq: u64) -> Result<Option<Version>, StoreError> {
        match self.store.version_id(component, seq)? {
            Some(id) => self.store.version(&id),
            None => Ok(None),
        }
    }

    fn by_id(&self, id: &VersionId) -> Result<Option<Version>, StoreError> {
        self.store.version(id)
    }
}

/// Creates a version of `name` from the files of its version `reference`, with its
/// dependencies resolved anew, or returns the existing one if nothing changed.
///
/// A `"latest"` dependency that has dependencies of its own is rebuilt first, the same
/// way, and the result stands for it: otherwise a change two levels down would never
/// reach the top (`m -> lib -> helper`: rebuilding `m` alone would find `lib`'s newest
/// version still on the old `helper`). Pinned dependencies (a number or an id) stay
/// as they are.
pub async fn rebuild_version(
    store: &Arc<dyn Store>,
    blobs: &BlobStore,
    name: &str,
    reference: &str,
    pushed_by: &str,
    now_ms: u64,
) -> Result<RebuildResponse, RegistryError> {
    let version = find_version(store, name, reference).await?;
    let mut dependencies_rebuilt = Vec::new();
    let mut stack = Vec::new();
    let (version, created) = rebuild(
        store,
        blobs,
        version,
        pushed_by,
        now_ms,
        &mut stack,
        &mut dependencies_rebuilt,
    )
    .await?;
    Ok(RebuildResponse {
        created,
        version,
        dependencies_rebuilt,
    })
}

type Rebuilt<'a> =
    Pin<Box<dyn Future<Output = Result<(Version, bool), RegistryError>> + Send + 'a>>;

/// One level of [`rebuild_version`]; `stack` holds the components above, to stop a
/// cycle between newest versions, and `created` collects the versions made below.
fn rebuild<'a>(
    store: &'a Arc<dyn Store>,
    blobs: &'a BlobStore,
    version: Version,
    pushed_by: &'a str,
    now_ms: u64,
    stack: &'a mut Vec<String>,
    created: &'a mut Vec<ResolvedDependency>,
) -> Rebuilt<'a> {
    Box::pin(async move {
        let manifest = manifest_of(blobs, &version).await?;
        stack.push(version.label());
        let mut rebuilt = BTreeMap::new();
        for (dependency, reference) in &manifest.dependencies {
            if *reference != DependencyRef::Latest {
                continue;
            }
            if let Some(above) = stack
                .iter()
                .position(|label| label.split('@').next() == Some(dependency.as_str()))
            {
                let mut path = stack[above..].to_vec();
                path.push(dependency.clone());
                return Err(Box::new(DependencyError::Cycle {
                    component: dependency.clone(),
                    path,
                })
                .into());
            }
            let owned = dependency.clone();
            let Some(newest) = blocking(store, move |s| s.newest_version(&owned)).await? else {
                // Resolution below names the missing component.
                continue;
            };
            if newest.dependencies.is_empty() {
                // Nothing below it can have changed: "latest" already means it.
                continue;
            }
            let (fresh, was_created) =
                rebuild(store, blobs, newest, pushed_by, now_ms, stack, created).await?;
            if was_created {
                created.push(ResolvedDependency::on(&fresh));
            }
            rebuilt.insert(dependency.clone(), fresh);
        }
        stack.pop();
        let from = version.label();
        let fresh = Version {
            id: version.id,
            component: version.component.clone(),
            seq: 0,
            total_bytes: version.total_bytes,
            files: version.files,
            created_at_ms: now_ms,
            pushed_by: pushed_by.to_owned(),
            description: manifest.component.description,
            dependencies: Vec::new(),
        };
        let (fresh, was_created) =
            insert_resolved(store, fresh, manifest.dependencies, rebuilt).await?;
        if was_created {
            tracing::info!(version = %fresh.label(), %from, by = %pushed_by, "version rebuilt");
        }
        Ok((fresh, was_created))
    })
}

/// The deployments whose version imports `component`, directly or through other
/// components, by deployment name. A deployment of `component` itself is not listed.
pub async fn dependents(
    store: &Arc<dyn Store>,
    component: &str,
) -> Result<Vec<DependentDeployment>, RegistryError> {
    let component = component.to_owned();
    Ok(blocking(store, move |s| {
        let lookup = StoreLookup {
            store: s,
            rebuilt: BTreeMap::new(),
        };
        let mut out = Vec::new();
        for deployment in s.deployments()? {
            if deployment.component == component {
                continue;
            }
            let Some(version) = s.version(&deployment.version)? else {
                continue;
            };
            if version.dependencies.is_empty() {
                continue;
            }
            let tree = match dependency::tree(&version.component, &version.dependencies, &lookup)
            {
                Ok(tree) => tree,
                Err(ResolveError::Lookup(e)) => return Err(e),
                // Stored versions passed these checks when they were created.
                Err(ResolveError::Dependency(e)) => {
                    tracing::warn!(deployment = %deployment.name, error = %e, "cannot read a deployment's dependencies");
                    continue;
                }
            };
            if let Some(uses) = tree.into_iter().find(|d| d.component == component) {
                out.push(DependentDeployment {
                    direct: version.dependencies.iter().any(|d| d.component == component),
                    deployment: deployment.name,
                    component: deployment.component,
                    version: deployment.version,
                    seq: deployment.seq,
                    uses,
                });
            }
        }
        Ok(out)
    })
    .await?)
}

/// Finds `name`'s version by sequence number, `latest` or id.
pub async fn find_version(
    store: &Arc<dyn Store>,
    name: &str,
    reference: &str,
) -> Result<Version, RegistryError> {
    let owned = name.to_owned();
    let version = if reference == "latest" {
        blocking(store, move |s| s.versions(&owned)).await?.pop()
    } else if let Ok(seq) = reference.parse::<u64>() {
        blocking(store, move |s| match s.version_id(&owned, seq)? {
            Some(id) => s.version(&id),
            None => Ok(None),
        })
        .await?
    } else {
        let id: BlobHash = reference
            .parse()
            .map_err(|_| RegistryError::BadRef(reference.to_owned()))?;
        blocking(store, move |s| s.version(&VersionId(id)))
            .await?
            .filter(|v| v.component == name)
    };
    match version {
        Some(version) => Ok(version),
        None => Err(no_version(store, name, reference).await?),
    }
}

/// Most pushed components a "no such component" error lists.
const LISTED_COMPONENTS: usize = 10;

/// Why `name@reference` is not in the registry: the component has no such version, or
/// there is no such component (and which pushed one the user may have meant).
async fn no_version(
    store: &Arc<dyn Store>,
    name: &str,
    reference: &str,
) -> Result<RegistryError, RegistryError> {
    let owned = name.to_owned();
    if let Some(newest) = blocking(store, move |s| s.newest_version(&owned)).await? {
        return Ok(RegistryError::NoVersion {
            name: name.to_owned(),
            reference: reference.to_owned(),
            newest: newest.seq,
        });
    }
    let pushed: Vec<String> = blocking(store, |s| s.components())
        .await?
        .into_iter()
        .map(|(component, _, _)| component)
        .collect();
    Ok(RegistryError::NoComponent {
        name: name.to_owned(),
        closest: mycel_core::manifest::closest_name(name, &pushed).map(str::to_owned),
        known: pushed.into_iter().take(LISTED_COMPONENTS).collect(),
    })
}

/// The parsed manifest of a stored version.
pub async fn manifest_of(blobs: &BlobStore, version: &Version) -> Result<Manifest, RegistryError> {
    let entry = version
        .files
        .iter()
        .find(|f| f.path.as_str() == MANIFEST_FILE)
        .ok_or(RegistryError::NoManifest)?;
    let bytes = blobs
        .read(&entry.hash)
        .await?
        .ok_or_else(|| RegistryError::MissingBlobs(vec![entry.hash]))?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError {
        file: MANIFEST_FILE.into(),
        key: None,
        message: "is not UTF-8 text".into(),
    })?;
    Ok(Manifest::parse(&text)?)
}

/// Checks that `version` carries a signature that covers exactly its files; returns
/// the signer's key hint. Who signed is for the agents to judge, each against the keys
/// it trusts: this only keeps an unsigned or mismatched version from rolling out.
pub async fn check_signed(blobs: &BlobStore, version: &Version) -> Result<String, RegistryError> {
    let not_signed = |source| RegistryError::NotSigned {
        version: version.label(),
        source,
    };
    let entry = version
        .files
        .iter()
        .find(|f| f.path.as_str() == SIGNATURE_FILE)
        .ok_or_else(|| not_signed(SignatureError::Unsigned))?;
    let bytes = blobs
        .read(&entry.hash)
        .await?
        .ok_or_else(|| RegistryError::MissingBlobs(vec![entry.hash]))?;
    let signature = Signature::parse(&bytes).map_err(not_signed)?;
    let signed = signature.claims().map_err(not_signed)?;
    let mut actual = signing::blake3_digests(&version.files);
    if signed.algorithm == HashAlgorithm::Sha256 {
        // The control plane keeps BLAKE3 names only; the digests are the agents' to
        // check, the names are checked here.
        for (path, digest) in actual.iter_mut() {
            if let Some(claimed) = signed.files.get(path) {
                digest.clone_from(claimed);
            }
        }
    }
    signed.check(&actual).map_err(not_signed)?;
    Ok(signature.hint().unwrap_or("no key hint").to_owned())
}

#[cfg(test)]
mod tests {
    use mycel_core::fleet::Deployment;
    use mycel_core::{ComponentPath, FileMode};

    use super::*;
    use crate::store::RedbStore;

    struct Registry {
        store: Arc<dyn Store>,
        blobs: BlobStore,
        _dir: tempfile::TempDir,
    }

    impl Registry {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> =
                Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap());
            let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
            Self {
                store,
                blobs,
                _dir: dir,
            }
        }

        /// Pushes component `name` with a model file holding `code` and these
        /// `[dependencies]` lines.
        async fn push(
            &self,
            name: &str,
            code: &str,
            dependencies: &str,
        ) -> Result<(Version, bool), RegistryError> {
            let manifest = format!(
                "[component]\nname = \"{name}\"\nentrypoint = \"model:M\"\n\n[dependencies]\n{dependencies}"
            );
            let mut files = Vec::new();
            for (path, bytes) in [
                ("mycel.toml", manifest.as_bytes()),
                ("model.py", code.as_bytes()),
            ] {
                let hash = BlobHash::of(bytes);
                let body = futures::stream::iter([Ok::<_, std::io::Error>(
                    bytes::Bytes::copy_from_slice(bytes),
                )]);
                self.blobs.write(hash, body, 1 << 20).await.unwrap();
                files.push(FileEntry {
                    path: ComponentPath::new(path).unwrap(),
                    hash,
                    size: bytes.len() as u64,
                    mode: FileMode::Regular,
                });
            }
            create_version(&self.store, &self.blobs, name, files, "admin", 1).await
        }

        async fn rebuild(&self, name: &str, reference: &str) -> RebuildResponse {
            rebuild_version(&self.store, &self.blobs, name, reference, "admin", 2)
                .await
                .unwrap()
        }

        fn deploy(&self, name: &str, version: &Version) {
            self.store
                .put_deployment(&Deployment {
                    name: name.into(),
                    component: version.component.clone(),
                    version: version.id,
                    seq: version.seq,
                    copies: [("here".to_owned(), 1)].into(),
                    serve: Default::default(),
                    resources: Default::default(),
                    signature: None,
                    generation: 1,
                    surge: Default::default(),
                    max_unavailable: Default::default(),
                    deadline_s: 60,
                    require_signed: false,
                })
                .unwrap();
        }
    }

    fn labels(deps: &[ResolvedDependency]) -> Vec<String> {
        deps.iter().map(ResolvedDependency::label).collect()
    }

    #[tokio::test]
    async fn pushing_unchanged_source_after_a_dependency_changed_makes_a_new_version() {
        let r = Registry::new();
        let (helper1, _) = r.push("helper", "v1", "").await.unwrap();
        assert!(helper1.dependencies.is_empty());
        assert_eq!(helper1.id, VersionId::of(&helper1.files));

        let (model1, created) = r.push("model", "m", "helper = \"latest\"\n").await.unwrap();
        assert!(created);
        assert_eq!(labels(&model1.dependencies), ["helper@1"]);
        assert_eq!(model1.id, model1.content_id());
        assert_ne!(model1.id, VersionId::of(&model1.files));

        let (again, created) = r.push("model", "m", "helper = \"latest\"\n").await.unwrap();
        assert!(!created);
        assert_eq!(again, model1);

        r.push("helper", "v2", "").await.unwrap();
        let (model2, created) = r.push("model", "m", "helper = \"latest\"\n").await.unwrap();
        assert!(created);
        assert_eq!(
            (model2.seq, labels(&model2.dependencies)),
            (2, vec!["helper@2".into()])
        );
        // Pinned, it imports the old helper whatever is newest.
        let (pinned, _) = r.push("model", "m", "helper = 1\n").await.unwrap();
        assert_eq!(labels(&pinned.dependencies), ["helper@1"]);
    }

    #[tokio::test]
    async fn bad_dependencies_are_invalid_manifests() {
        let r = Registry::new();
        r.push("a", "1", "").await.unwrap();
        for (name, deps, expected) in [
            ("m", "missing = \"latest\"\n", "no component \"missing\""),
            ("m", "a = 5\n", "a has no version 5"),
            ("a", "a = \"latest\"\n", "cannot depend on itself"),
        ] {
            let err = r.push(name, "x", deps).await.unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidManifest, "{err}");
            assert!(err.to_string().contains(expected), "{deps}: {err}");
        }
        r.push("b", "1", "a = \"latest\"\n").await.unwrap();
        let err = r.push("a", "2", "b = \"latest\"\n").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidManifest);
        assert!(err.to_string().contains("a -> b@1 -> a@1"), "{err}");
        // Nothing was stored.
        assert_eq!(find_version(&r.store, "a", "latest").await.unwrap().seq, 1);
        assert!(find_version(&r.store, "m", "latest").await.is_err());
    }

    #[tokio::test]
    async fn rebuild_carries_a_change_up_through_latest_dependencies() {
        let r = Registry::new();
        r.push("helper", "v1", "").await.unwrap();
        r.push("lib", "l", "helper = \"latest\"\n").await.unwrap();
        let (model1, _) = r.push("model", "m", "lib = \"latest\"\n").await.unwrap();

        // Nothing changed: rebuilding returns the same version.
        let same = r.rebuild("model", "1").await;
        assert!(!same.created && same.dependencies_rebuilt.is_empty());
        assert_eq!(same.version.id, model1.id);

        let (helper2, _) = r.push("helper", "v2", "").await.unwrap();
        let rebuilt = r.rebuild("model", "1").await;
        assert!(rebuilt.created);
        assert_eq!(rebuilt.version.seq, 2);
        assert_eq!(rebuilt.version.files, model1.files);
        assert_eq!(labels(&rebuilt.version.dependencies), ["lib@2"]);
        assert_eq!(labels(&rebuilt.dependencies_rebuilt), ["lib@2"]);
        let lib2 = find_version(&r.store, "lib", "2").await.unwrap();
        assert_eq!(lib2.dependencies, vec![ResolvedDependency::on(&helper2)]);

        let again = r.rebuild("model", "latest").await;
        assert!(!again.created);
        assert_eq!(again.version.id, rebuilt.version.id);

        // A pinned dependency stays where it is.
        let (pinned, _) = r.push("pinned", "p", "lib = 1\n").await.unwrap();
        let kept = r.rebuild("pinned", "1").await;
        assert!(!kept.created);
        assert_eq!(kept.version.id, pinned.id);
    }

    #[tokio::test]
    async fn dependents_are_deployments_that_import_a_component_at_any_depth() {
        let r = Registry::new();
        let (helper1, _) = r.push("helper", "v1", "").await.unwrap();
        let (lib1, _) = r.push("lib", "l", "helper = \"latest\"\n").await.unwrap();
        let (model1, _) = r.push("model", "m", "lib = \"latest\"\n").await.unwrap();
        let (other, _) = r.push("other", "o", "").await.unwrap();
        r.deploy("model-prod", &model1);
        r.deploy("lib", &lib1);
        r.deploy("helper", &helper1);
        r.deploy("other", &other);

        let found = dependents(&r.store, "helper").await.unwrap();
        let names: Vec<(&str, bool)> = found
            .iter()
            .map(|d| (d.deployment.as_str(), d.direct))
            .collect();
        assert_eq!(names, [("lib", true), ("model-prod", false)]);
        assert_eq!(found[1].uses, ResolvedDependency::on(&helper1));
        assert_eq!((found[1].seq, found[1].version), (1, model1.id));
        assert!(dependents(&r.store, "other").await.unwrap().is_empty());
    }
}
