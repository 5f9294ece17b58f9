//! The `mycel.toml` manifest: parsed once into a typed, validated [`Manifest`].
//!
//! Parsing rejects unknown keys and bad values; [`Manifest::check_files`] then checks the
//! manifest against the component's file list (entrypoint module, weights, requirements
//! file). The CLI runs both before a push and the server runs both again on every new
//! version, so a manifest that reaches the store is always valid.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::path::ComponentPath;

/// The manifest's file name at the root of every component.
pub const MANIFEST_FILE: &str = "mycel.toml";

/// A validated `mycel.toml`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Manifest {
    /// `[component]`.
    pub component: ComponentSection,
    /// `[python]`.
    pub python: PythonSection,
    /// `[weights].files`: large files, stored as blobs like source files.
    pub weights: Vec<ComponentPath>,
    /// `[serve]`.
    pub serve: ServeOptions,
    /// `[resources]`.
    pub resources: Resources,
    /// `[dependencies]`: other components whose source this one imports.
    pub dependencies: BTreeMap<String, DependencyRef>,
    /// `[signature]`: declared inputs and outputs, for model metadata.
    pub signature: Option<Signature>,
    /// `[sandbox]`: what a serving worker may reach beyond its own files.
    pub sandbox: SandboxOptions,
}

/// `[sandbox]`: what a serving worker may do that the sandbox otherwise forbids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxOptions {
    /// Whether it may use the network (call another service, say); off by default.
    #[serde(default)]
    pub network: bool,
}

/// `[component]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentSection {
    /// `[a-z0-9-]`, 1 to 64 characters, starting with a letter or digit.
    pub name: String,
    /// The class the worker instantiates.
    pub entrypoint: Entrypoint,
    /// Free text for listings.
    pub description: String,
}

/// `module:Class`, e.g. `model:ResNet50` or `pkg.model:Net`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entrypoint {
    /// Dotted module path.
    pub module: String,
    /// Class name inside the module.
    pub class: String,
}

impl fmt::Display for Entrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.module, self.class)
    }
}

/// `[python]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PythonSection {
    /// A version specifier for the interpreter, such as `>=3.10` or `3.11`.
    pub version: String,
    /// Where the requirements come from.
    pub requirements: Requirements,
}

/// The interpreter constraint used when `[python].version` is absent.
pub const DEFAULT_PYTHON: &str = ">=3.9";

/// `[python].requirements` or `[python].requirements-file`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirements {
    /// PEP 508 requirement strings written in the manifest.
    List(Vec<String>),
    /// A requirements file inside the component.
    File(ComponentPath),
}

/// `[serve]`: how the agent batches requests for this component's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeOptions {
    /// Most rows (entries along axis 0) joined into one worker call; 1 = no batching.
    pub max_batch_size: u32,
    /// How long the first request of a batch waits for others, in milliseconds.
    pub batch_wait_ms: u32,
    /// The longest a request to this model may take, in milliseconds; the gateway's
    /// own limit applies when it is shorter, or when this is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Most requests that may wait for one replica's worker; past it a request is
    /// refused at once (503 with `Retry-After`). Unset: [`DEFAULT_MAX_QUEUE`], or four
    /// batches when that is more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_batch_size: 1,
            batch_wait_ms: 0,
            timeout_ms: None,
            max_queue: None,
        }
    }
}

impl ServeOptions {
    /// How many requests may wait for one replica's worker.
    pub fn queue_capacity(&self) -> usize {
        match self.max_queue {
            Some(n) => n as usize,
            None => DEFAULT_MAX_QUEUE.max(4 * self.max_batch_size) as usize,
        }
    }
}

/// The queue a replica has when `[serve].max_queue` is not set.
pub const DEFAULT_MAX_QUEUE: u32 = 256;
/// The longest queue `[serve].max_queue` may ask for.
pub const MAX_QUEUE: u32 = 65_536;

/// The longest `[serve].timeout_ms` may be: an hour.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;

/// `[resources]`: what one replica needs from its node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores, fractional allowed.
    pub cpus: f64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            memory_bytes: 512 << 20,
            gpus: 0,
        }
    }
}

/// A `[dependencies]` value: which version of another component to import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyRef {
    /// The newest version at push time.
    Latest,
    /// A sequence number.
    Seq(u64),
    /// A version id (64 hex digits).
    Id(crate::version::VersionId),
}

/// `[signature]`: the tensors a model takes and returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Input tensors.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// Output tensors.
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
}

/// One tensor in a [`Signature`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// An Open Inference Protocol datatype: BOOL, INT8..INT64, UINT8..UINT64, FP16,
    /// FP32, FP64 or BYTES.
    pub datatype: String,
    /// Dimensions; -1 for a variable one.
    pub shape: Vec<i64>,
}

/// The Open Inference Protocol datatypes.
pub const DATATYPES: &[&str] = &[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16",
    "FP32", "FP64", "BYTES",
];

/// Why a manifest was refused: the file, the key (if one is to blame) and what is
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", key.as_ref().map(|k| format!(": {k}")).unwrap_or_default())]
pub struct ManifestError {
    /// The manifest file, possibly with `:line:column`.
    pub file: String,
    /// The offending key, as `[section].key`.
    pub key: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ManifestError {
    fn at(key: &str, message: impl Into<String>) -> Self {
        Self {
            file: MANIFEST_FILE.to_owned(),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }
}

// The raw shapes serde reads; `Manifest::parse` turns them into the typed form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    component: Option<RawComponent>,
    #[serde(default)]
    python: RawPython,
    #[serde(default)]
    weights: RawWeights,
    #[serde(default)]
    serve: RawServe,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    dependencies: BTreeMap<String, toml::Value>,
    signature: Option<Signature>,
    #[serde(default)]
    sandbox: SandboxOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    name: Option<String>,
    entrypoint: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPython {
    version: Option<String>,
    requirements: Option<Vec<String>>,
    requirements_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    #[serde(default)]
    files: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServe {
    max_batch_size: Option<i64>,
    batch_wait_ms: Option<i64>,
    timeout_ms: Option<i64>,
    max_queue: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpus: Option<f64>,
    memory: Option<toml::Value>,
    gpus: Option<i64>,
}

impl Manifest {
    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let component = raw.component.ok_or_else(|| {
            ManifestError::at(
                "[component]",
                "missing section; expected [component] with name and entrypoint",
            )
        })?;
        let name = component.name.ok_or_else(|| {
            ManifestError::at(
                "[component].name",
                "missing; expected a name such as \"resnet50\"",
            )
        })?;
        validate_name(&name).map_err(|m| ManifestError::at("[component].name", m))?;
        let entrypoint = component.entrypoint.ok_or_else(|| {
            ManifestError::at(
                "[component].entrypoint",
                "missing; expected \"module:Class\" such as \"model:Model\"",
            )
        })?;
        let entrypoint = parse_entrypoint(&entrypoint)
            .map_err(|m| ManifestError::at("[component].entrypoint", m))?;

        Ok(Manifest {
            component: ComponentSection {
                name,
                entrypoint,
                description: component.description,
            },
            python: parse_python(raw.python)?,
            weights: raw
                .weights
                .files
                .iter()
                .map(|f| {
                    ComponentPath::new(f)
                        .map_err(|e| ManifestError::at("[weights].files", e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            serve: parse_serve(raw.serve)?,
            resources: parse_resources(raw.resources)?,
            dependencies: raw
                .dependencies
                .into_iter()
                .map(|(dep, value)| {
                    let key = format!("[dependencies].{dep}");
                    validate_name(&dep).map_err(|m| ManifestError::at(&key, m))?;
                    let version =
                        parse_dependency(&value).map_err(|m| ManifestError::at(&key, m))?;
                    Ok((dep, version))
                })
                .collect::<Result<_, ManifestError>>()?,
            signature: raw.signature.map(validate_signature).transpose()?,
            sandbox: raw.sandbox,
        })
    }

    /// Checks the manifest against the component's files: the entrypoint module, every
    /// weights file and the requirements file must be there.
    pub fn check_files(&self, has_file: impl Fn(&str) -> bool) -> Result<(), ManifestError> {
        let module_path = self.component.entrypoint.module.replace('.', "/");
        let candidates = [
            format!("{module_path}.py"),
            format!("{module_path}/__init__.py"),
        ];
        if !candidates.iter().any(|c| has_file(c)) {
            return Err(ManifestError::at(
                "[component].entrypoint",
                format!(
                    "module {:?} not found; expected {} or {} in the component",
                    self.component.entrypoint.module, candidates[0], candidates[1]
                ),
            ));
        }
        for weights in &self.weights {
            if !has_file(weights.as_str()) {
                return Err(ManifestError::at(
                    "[weights].files",
                    format!("file {weights:?} does not exist in the component (or is ignored)"),
                ));
            }
        }
        if let Requirements::File(file) = &self.python.requirements {
            if !has_file(file.as_str()) {
                return Err(ManifestError::at(
                    "[python].requirements-file",
                    format!("file {file:?} does not exist in the component (or is ignored)"),
                ));
            }
        }
        Ok(())
    }
}

fn toml_error(text: &str, error: &toml::de::Error) -> ManifestError {
    let file = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{MANIFEST_FILE}:{line}:{column}")
        }
        None => MANIFEST_FILE.to_owned(),
    };
    ManifestError {
        file,
        key: None,
        message: error.message().trim_end().replace("field", "key"),
    }
}

/// Checks a component name: `[a-z0-9-]`, 1 to 64 characters, not starting with `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name {:?}; expected 1 to 64 of a-z, 0-9 and '-', not starting with '-'",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// The name in `known` nearest to `name` when it is near enough to be a typo of it
/// (at most two edits, or a quarter of its length for long names): what "did you
/// mean" offers.
pub fn closest_name<'a, S: AsRef<str>>(name: &str, known: &'a [S]) -> Option<&'a str> {
    known
        .iter()
        .map(AsRef::as_ref)
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|&(distance, k)| distance <= 2.max(k.len() / 4))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, k)| k)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn parse_entrypoint(value: &str) -> Result<Entrypoint, String> {
    let expected = "expected \"module:Class\" such as \"model:Model\"";
    let (module, class) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} has no ':'; {expected}"))?;
    if !module.split('.').all(is_identifier) {
        return Err(format!(
            "module {module:?} is not a Python module path; {expected}"
        ));
    }
    if !is_identifier(class) {
        return Err(format!(
            "class {class:?} is not a Python identifier; {expected}"
        ));
    }
    Ok(Entrypoint {
        module: module.to_owned(),
        class: class.to_owned(),
    })
}

fn parse_python(raw: RawPython) -> Result<PythonSection, ManifestError> {
    let version = raw.version.unwrap_or_else(|| DEFAULT_PYTHON.to_owned());
    let version_ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "<>=!~.,* ".contains(c));
    if !version_ok {
        return Err(ManifestError::at(
            "[python].version",
            format!("{version:?} is not a version specifier; expected e.g. \">=3.10\" or \"3.11\""),
        ));
    }
    let requirements = match (raw.requirements, raw.requirements_file) {
        (Some(_), Some(_)) => {
            return Err(ManifestError::at(
                "[python].requirements-file",
                "both requirements and requirements-file are set; expected one of them",
            ))
        }
        (None, Some(file)) => Requirements::File(
            ComponentPath::new(&file)
                .map_err(|e| ManifestError::at("[python].requirements-file", e.to_string()))?,
        ),
        (list, None) => {
            let list = list.unwrap_or_default();
            for req in &list {
                validate_requirement(req)
                    .map_err(|m| ManifestError::at("[python].requirements", m))?;
            }
            Requirements::List(list)
        }
    };
    Ok(PythonSection {
        version,
        requirements,
    })
}

/// Checks one requirement string. Options (`--index-url ...`) are refused: a manifest
/// must not be able to point the environment builder at another package index.
pub fn validate_requirement(req: &str) -> Result<(), String> {
    let trimmed = req.trim();
    if trimmed.is_empty() {
        return Err("empty requirement; expected a PEP 508 string such as \"numpy>=1.26\"".into());
    }
    if trimmed.starts_with('-') {
        return Err(format!(
            "{req:?} is an installer option; expected a PEP 508 requirement such as \"numpy>=1.26\""
        ));
    }
    if req.chars().any(char::is_control) {
        return Err(format!("{req:?} contains a control character"));
    }
    Ok(())
}

fn parse_serve(raw: RawServe) -> Result<ServeOptions, ManifestError> {
    let defaults = ServeOptions::default();
    let max_batch_size = match raw.max_batch_size {
        None => defaults.max_batch_size,
        Some(n @ 1..=4096) => n as u32,
        Some(n) => {
            return Err(ManifestError::at(
                "[serve].max_batch_size",
                format!("{n} is out of range; expected 1 to 4096"),
            ))
        }
    };
    let batch_wait_ms = match raw.batch_wait_ms {
        None => defaults.batch_wait_ms,
        Some(n @ 0..=60_000) => n as u32,
        Some(n) => {
            return Err(ManifestError::at(
                "[serve].batch_wait_ms",
                format!("{n} is out of range; expected 0 to 60000 milliseconds"),
            ))
        }
    };
    let timeout_ms = match raw.timeout_ms {
        None => None,
        Some(n) if (1..=i64::from(MAX_TIMEOUT_MS)).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(ManifestError::at(
                "[serve].timeout_ms",
                format!("{n} is out of range; expected 1 to {MAX_TIMEOUT_MS} milliseconds"),
            ))
        }
    };
    let max_queue = match raw.max_queue {
        None => None,
        Some(n) if (1..=i64::from(MAX_QUEUE)).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(ManifestError::at(
                "[serve].max_queue",
                format!("{n} is out of range; expected 1 to {MAX_QUEUE} requests"),
            ))
        }
    };
    Ok(ServeOptions {
        max_batch_size,
        batch_wait_ms,
        timeout_ms,
        max_queue,
    })
}

fn parse_resources(raw: RawResources) -> Result<Resources, ManifestError> {
    let defaults = Resources::default();
    let cpus = raw.cpus.unwrap_or(defaults.cpus);
    if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
        return Err(ManifestError::at(
            "[resources].cpus",
            format!("{cpus} is out of range; expected a number of cores above 0, such as 0.5 or 2"),
        ));
    }
    let memory_bytes = match raw.memory {
        None => defaults.memory_bytes,
        Some(toml::Value::String(s)) => {
            parse_size(&s).map_err(|m| ManifestError::at("[resources].memory", m))?
        }
        Some(toml::Value::Integer(n)) if n > 0 => n as u64,
        Some(other) => {
            return Err(ManifestError::at(
                "[resources].memory",
                format!("{other} is not a size; expected bytes or a string such as \"2GiB\""),
            ))
        }
    };
    let gpus = match raw.gpus {
        None => defaults.gpus,
        Some(n @ 0..=64) => n as u32,
        Some(n) => {
            return Err(ManifestError::at(
                "[resources].gpus",
                format!("{n} is out of range; expected 0 to 64"),
            ))
        }
    };
    Ok(Resources {
        cpus,
        memory_bytes,
        gpus,
    })
}

/// Parses a size such as `512MiB`, `2GiB`, `1.5G`, `300k` or `1000` (bytes).
/// Binary (KiB, MiB, GiB, TiB) and decimal (K/KB, M/MB, G/GB, T/TB) units.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = "expected a size such as \"512MiB\", \"2GiB\" or a number of bytes";
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} has no number; {expected}"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(format!("{text:?} has an unknown unit {unit:?}; {expected}")),
    };
    let bytes = number * multiplier as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?} is out of range; {expected}"));
    }
    Ok(bytes as u64)
}

fn parse_dependency(value: &toml::Value) -> Result<DependencyRef, String> {
    let expected = "expected \"latest\", a version number or a 64-hex-digit version id";
    match value {
        toml::Value::String(s) if s == "latest" => Ok(DependencyRef::Latest),
        toml::Value::String(s) => {
            if let Ok(seq) = s.parse::<u64>() {
                if seq > 0 {
                    return Ok(DependencyRef::Seq(seq));
                }
            }
            s.parse()
                .map(|hash| DependencyRef::Id(crate::version::VersionId(hash)))
                .map_err(|_| format!("{s:?} is not a version; {expected}"))
        }
        toml::Value::Integer(n) if *n > 0 => Ok(DependencyRef::Seq(*n as u64)),
        other => Err(format!("{other} is not a version; {expected}")),
    }
}

fn validate_signature(signature: Signature) -> Result<Signature, ManifestError> {
    for (section, tensors) in [
        ("inputs", &signature.inputs),
        ("outputs", &signature.outputs),
    ] {
        let key = format!("[signature].{section}");
        for tensor in tensors {
            if tensor.name.is_empty() {
                return Err(ManifestError::at(&key, "a tensor has an empty name"));
            }
            if !DATATYPES.contains(&tensor.datatype.as_str()) {
                return Err(ManifestError::at(
                    &key,
                    format!(
                        "tensor {:?} has datatype {:?}; expected one of {}",
                        tensor.name,
                        tensor.datatype,
                        DATATYPES.join(", ")
                    ),
                ));
            }
            if tensor.shape.iter().any(|&d| d < -1) {
                return Err(ManifestError::at(
                    &key,
                    format!(
                        "tensor {:?} has a dimension below -1; expected sizes or -1",
                        tensor.name
                    ),
                ));
            }
        }
    }
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[component]
name = "resnet50"
entrypoint = "model:ResNet50"
description = "ImageNet classifier"

[python]
version = ">=3.10"
requirements = ["torch>=2.2", "torchvision"]

[weights]
files = ["weights/resnet50.safetensors"]

[serve]
max_batch_size = 16
batch_wait_ms = 5
timeout_ms = 2000
max_queue = 64

[resources]
cpus = 1.0
memory = "2GiB"
gpus = 0

[dependencies]
imagenet-preprocess = "latest"
tokenizer = 3

[sandbox]
network = true

[[signature.inputs]]
name = "image"
datatype = "FP32"
shape = [-1, 3, 224, 224]
"#;

    fn err(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn closest_name_offers_only_near_names() {
        let known = ["hello", "resnet50", "mobilenet-v2"];
        assert_eq!(closest_name("helo", &known), Some("hello"));
        assert_eq!(closest_name("mobilenetv2", &known), Some("mobilenet-v2"));
        assert_eq!(closest_name("resnet-50", &known), Some("resnet50"));
        assert_eq!(closest_name("inception", &known), None);
        assert_eq!(closest_name("x", &[] as &[&str]), None);
    }

    #[test]
    fn parses_every_field() {
        let m = Manifest::parse(FULL).unwrap();
        assert_eq!(m.component.name, "resnet50");
        assert_eq!(m.component.entrypoint.to_string(), "model:ResNet50");
        assert_eq!(m.python.version, ">=3.10");
        assert_eq!(
            m.python.requirements,
            Requirements::List(vec!["torch>=2.2".into(), "torchvision".into()])
        );
        assert_eq!(m.weights[0].as_str(), "weights/resnet50.safetensors");
        assert_eq!(
            m.serve,
            ServeOptions {
                max_batch_size: 16,
                batch_wait_ms: 5,
                timeout_ms: Some(2000),
                max_queue: Some(64),
            }
        );
        assert_eq!(m.resources.memory_bytes, 2 << 30);
        assert_eq!(m.dependencies["imagenet-preprocess"], DependencyRef::Latest);
        assert_eq!(m.dependencies["tokenizer"], DependencyRef::Seq(3));
        assert_eq!(m.signature.unwrap().inputs[0].shape, vec![-1, 3, 224, 224]);
        assert!(m.sandbox.network);
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m =
            Manifest::parse("[component]\nname = \"echo\"\nentrypoint = \"model:Echo\"\n").unwrap();
        assert_eq!(m.python.version, DEFAULT_PYTHON);
        assert_eq!(m.python.requirements, Requirements::List(vec![]));
        assert_eq!(m.serve, ServeOptions::default());
        assert_eq!(m.resources, Resources::default());
        assert!(m.weights.is_empty() && m.dependencies.is_empty() && m.signature.is_none());
        assert!(
            !m.sandbox.network,
            "a worker gets no network unless it asks"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_choices() {
        let e =
            err("[component]\nname = \"a\"\nentrypoint = \"m:C\"\n[python]\nrequirments = []\n");
        assert!(e.starts_with("mycel.toml:5:1:"), "{e}");
        assert!(e.contains("unknown key `requirments`"), "{e}");
        assert!(e.contains("requirements-file"), "{e}");
        let e = err("[component]\nname = \"a\"\nentrypoint = \"m:C\"\n[gpu]\n");
        assert!(e.contains("unknown key `gpu`"), "{e}");
        let e = err("[component]\nname = \"a\"\nentrypoint = \"m:C\"\n[sandbox]\nnet = true\n");
        assert!(
            e.contains("unknown key `net`") && e.contains("network"),
            "{e}"
        );
        let e =
            err("[component]\nname = \"a\"\nentrypoint = \"m:C\"\n[sandbox]\nnetwork = \"yes\"\n");
        assert!(e.contains("mycel.toml:5:"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_expectation() {
        let base =
            |extra: &str| format!("[component]\nname = \"a\"\nentrypoint = \"m:C\"\n{extra}");
        for (text, key, expected) in [
            (
                "[component]\nentrypoint = \"m:C\"\n".to_owned(),
                "[component].name",
                "missing",
            ),
            (
                "[component]\nname = \"a\"\n".to_owned(),
                "[component].entrypoint",
                "missing",
            ),
            (
                "[component]\nname = \"Bad_Name\"\nentrypoint = \"m:C\"\n".to_owned(),
                "[component].name",
                "a-z",
            ),
            (
                "[component]\nname = \"a\"\nentrypoint = \"model\"\n".to_owned(),
                "[component].entrypoint",
                "no ':'",
            ),
            (
                "[component]\nname = \"a\"\nentrypoint = \"my-mod:C\"\n".to_owned(),
                "[component].entrypoint",
                "module",
            ),
            (
                "[component]\nname = \"a\"\nentrypoint = \"m:1C\"\n".to_owned(),
                "[component].entrypoint",
                "class",
            ),
            (
                base("[python]\nrequirements = [\"--index-url=http://x\"]\n"),
                "[python].requirements",
                "installer option",
            ),
            (
                base("[python]\nrequirements = []\nrequirements-file = \"r.txt\"\n"),
                "[python].requirements-file",
                "both",
            ),
            (
                base("[python]\nversion = \"3.11; rm -rf\"\n"),
                "[python].version",
                "specifier",
            ),
            (
                base("[weights]\nfiles = [\"../secret\"]\n"),
                "[weights].files",
                "'..'",
            ),
            (
                base("[serve]\nmax_batch_size = 0\n"),
                "[serve].max_batch_size",
                "1 to 4096",
            ),
            (
                base("[serve]\nmax_queue = 0\n"),
                "[serve].max_queue",
                "1 to 65536",
            ),
            (
                base("[resources]\ncpus = -1.0\n"),
                "[resources].cpus",
                "above 0",
            ),
            (
                base("[resources]\nmemory = \"lots\"\n"),
                "[resources].memory",
                "size",
            ),
            (
                base("[dependencies]\nx = \"newest\"\n"),
                "[dependencies].x",
                "latest",
            ),
            (
                base("[[signature.inputs]]\nname = \"x\"\ndatatype = \"FLOAT\"\nshape = [1]\n"),
                "[signature].inputs",
                "FP32",
            ),
        ] {
            let e = Manifest::parse(&text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(e.message.contains(expected), "{text}: {e}");
            assert!(e.to_string().starts_with("mycel.toml: "), "{e}");
        }
    }

    #[test]
    fn check_files_finds_missing_module_weights_and_requirements() {
        let m = Manifest::parse(FULL).unwrap();
        let files = ["model.py", "weights/resnet50.safetensors"];
        assert!(m.check_files(|p| files.contains(&p)).is_ok());

        let e = m
            .check_files(|p| p == "weights/resnet50.safetensors")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[component].entrypoint"));
        assert!(e.message.contains("model.py or model/__init__.py"), "{e}");

        let e = m.check_files(|p| p == "model.py").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[weights].files"));

        let pkg = Manifest::parse("[component]\nname = \"a\"\nentrypoint = \"pkg.net:C\"\n[python]\nrequirements-file = \"req.txt\"\n").unwrap();
        let e = pkg.check_files(|p| p == "pkg/net/__init__.py").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[python].requirements-file"));
        assert!(pkg
            .check_files(|p| p == "pkg/net.py" || p == "req.txt")
            .is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("300k"), Ok(300_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "GiB", "1.2.3G", "5 parsecs", "0", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "resnet50", "inception-v3", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
