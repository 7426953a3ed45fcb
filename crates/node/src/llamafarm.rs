//! LlamaFarm project files (`llamafarm.yaml`): the parts a node acts on — the project's
//! `namespace/name`, the runtime models (provider, model, base URL) the node fronts as model
//! servers, and the RAG databases. LlamaFarm's schema moves, so unknown fields are ignored and both
//! the `runtime.models[]` list and the older single-model `runtime` form are read.

use std::time::Duration;

use atmosphere_backends::adapters::Kind;
use serde::Deserialize;

use crate::config::ServerSection;

/// Why a project file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    #[error("llamafarm.yaml is not valid YAML for a project: {0}")]
    Yaml(String),
    #[error("llamafarm.yaml: {0}")]
    Invalid(String),
}

/// What a node reads from a `llamafarm.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Project {
    #[serde(default)]
    pub version: Option<String>,
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub rag: Option<Rag>,
}

fn default_namespace() -> String {
    "default".into()
}

/// `runtime:` — a list of models, or (older files) one model's fields inline.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Runtime {
    #[serde(default)]
    pub models: Vec<RuntimeModel>,
    #[serde(flatten)]
    pub inline: Option<RuntimeModel>,
}

/// One model the project runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeModel {
    #[serde(default)]
    pub name: Option<String>,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Rag {
    #[serde(default)]
    pub databases: Vec<RagDatabase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RagDatabase {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

impl Project {
    /// Parses and checks a project file.
    pub fn parse(text: &str) -> Result<Self, ProjectError> {
        if text.len() > atmosphere_auth::config::MAX_CONFIG_BYTES {
            return Err(ProjectError::Invalid(format!(
                "{} bytes; the limit is {}",
                text.len(),
                atmosphere_auth::config::MAX_CONFIG_BYTES
            )));
        }
        let project: Self =
            serde_saphyr::from_str(text).map_err(|e| ProjectError::Yaml(e.to_string()))?;
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 64
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(&project.name) || !valid(&project.namespace) {
            return Err(ProjectError::Invalid(format!(
                "name {:?} / namespace {:?}: use letters, digits, '-', '_' or '.' (at most 64)",
                project.name, project.namespace
            )));
        }
        for model in project.models() {
            model.server_kind()?;
        }
        Ok(project)
    }

    /// `namespace/name`: the key the mesh syncs the file under.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Every runtime model, whichever form the file uses.
    pub fn models(&self) -> impl Iterator<Item = &RuntimeModel> {
        self.runtime
            .models
            .iter()
            .chain(self.runtime.inline.as_ref())
    }

    /// The model servers a node using this project fronts: one per distinct provider URL, plus
    /// the LlamaFarm server itself when the node names one.
    pub fn servers(&self, llamafarm_server: Option<&str>) -> Vec<ServerSection> {
        let mut servers: Vec<ServerSection> = Vec::new();
        for model in self.models() {
            let Ok((kind, url)) = model.server_kind() else {
                continue;
            };
            if !servers.iter().any(|s| s.kind == kind && s.url == url) {
                servers.push(section(kind, url, None));
            }
        }
        if let Some(url) = llamafarm_server {
            servers.push(section(
                Kind::LlamaFarm,
                url.trim_end_matches('/').to_owned(),
                Some(self.key()),
            ));
        }
        servers
    }
}

fn section(kind: Kind, url: String, project: Option<String>) -> ServerSection {
    ServerSection {
        kind,
        url,
        project,
        runtime: None,
        timeout: Duration::from_secs(120),
    }
}

impl RuntimeModel {
    /// The adapter and base URL that serve this model. LlamaFarm's providers: `ollama` (its own
    /// API), and the OpenAI-compatible ones (`openai`, `lemonade`, `vllm`, `universal`).
    pub fn server_kind(&self) -> Result<(Kind, String), ProjectError> {
        let base = |default: &str| {
            let url = self.base_url.as_deref().unwrap_or(default).trim();
            url.trim_end_matches('/')
                .trim_end_matches("/v1")
                .trim_end_matches('/')
                .to_owned()
        };
        let url_ok = |url: String| {
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url)
            } else {
                Err(ProjectError::Invalid(format!(
                    "model {:?}: base_url {url:?} is not an http(s) URL",
                    self.model
                )))
            }
        };
        match self.provider.to_ascii_lowercase().as_str() {
            "ollama" => Ok((Kind::Ollama, url_ok(base("http://127.0.0.1:11434"))?)),
            "universal" => Ok((Kind::OpenAi, url_ok(base("http://127.0.0.1:11540"))?)),
            "openai" | "lemonade" | "vllm" | "llamacpp" | "llama.cpp" => match &self.base_url {
                Some(_) => Ok((Kind::OpenAi, url_ok(base(""))?)),
                None => Err(ProjectError::Invalid(format!(
                    "model {:?} (provider {}) needs a base_url",
                    self.model, self.provider
                ))),
            },
            other => Err(ProjectError::Invalid(format!(
                "model {:?}: unknown provider {other:?} (use ollama, openai, lemonade, vllm or universal)",
                self.model
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
version: v1
name: home-assist
namespace: family
runtime:
  models:
    - name: fast
      provider: ollama
      model: llama3.2:3b
      base_url: http://127.0.0.1:11434/v1
      default: true
    - name: local
      provider: openai
      model: smollm2-135m
      base_url: http://127.0.0.1:8080/v1/
prompts:
  - name: default
    messages: [{role: system, content: "Be brief."}]
rag:
  databases:
    - name: policies
      type: ChromaStore
"#;

    #[test]
    fn a_project_file_gives_its_key_and_servers() {
        let project = Project::parse(FILE).unwrap();
        assert_eq!(project.key(), "family/home-assist");
        assert_eq!(project.rag.as_ref().unwrap().databases[0].name, "policies");
        let servers = project.servers(Some("http://127.0.0.1:14345/"));
        let summary: Vec<(Kind, &str, Option<&str>)> = servers
            .iter()
            .map(|s| (s.kind, s.url.as_str(), s.project.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                (Kind::Ollama, "http://127.0.0.1:11434", None),
                (Kind::OpenAi, "http://127.0.0.1:8080", None),
                (
                    Kind::LlamaFarm,
                    "http://127.0.0.1:14345",
                    Some("family/home-assist")
                ),
            ]
        );
    }

    #[test]
    fn the_older_single_model_form_is_read() {
        let project =
            Project::parse("name: p\nruntime:\n  provider: ollama\n  model: gemma3:1b\n").unwrap();
        assert_eq!(project.key(), "default/p");
        assert_eq!(project.models().count(), 1);
        assert_eq!(project.servers(None)[0].url, "http://127.0.0.1:11434");
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let err = Project::parse("name: [unclosed").unwrap_err();
        assert!(matches!(err, ProjectError::Yaml(_)), "{err}");
        let err = Project::parse("runtime: {}\n").unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
        let err = Project::parse("name: ../etc\n").unwrap_err();
        assert!(err.to_string().contains("letters"), "{err}");
        let err = Project::parse(
            "name: p\nruntime:\n  models:\n    - provider: carrier-pigeon\n      model: m\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown provider"), "{err}");
        let err = Project::parse(
            "name: p\nruntime:\n  models:\n    - provider: openai\n      model: m\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs a base_url"), "{err}");
    }
}
