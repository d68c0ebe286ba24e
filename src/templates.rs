//! Pipeline templates: ready-made definitions usable by name (`mental_health_analysis`,
//! `bias_detection`), shipped in `config/pipelines/` and compiled into the binary, plus any
//! `*.toml` an operator puts in a templates directory.

use std::path::Path;

use mcpd_actors::model::{
    ErrorStrategy, Object, Pipeline, PipelineConfiguration, PipelineType, SecurityLevel,
};
use serde::Deserialize;

/// A multi-line parser message as one line: where, then what.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first != last => format!("{first}: {last}"),
        (Some(first), _) => first.to_string(),
        _ => String::new(),
    }
}

/// The templates shipped with mcpd: name and TOML text.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "mental_health_analysis",
        include_str!("../config/pipelines/mental_health_analysis.toml"),
    ),
    (
        "bias_detection",
        include_str!("../config/pipelines/bias_detection.toml"),
    ),
];

/// A pipeline definition without input: what a template file holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Pipeline kind.
    #[serde(rename = "type")]
    pub pipeline_type: PipelineType,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Default priority, 1–10.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Security level.
    #[serde(default)]
    pub security_level: SecurityLevel,
    /// Error strategy.
    #[serde(default)]
    pub error_strategy: ErrorStrategy,
    /// Stages, routing rules, quality thresholds.
    pub configuration: PipelineConfiguration,
}

fn default_priority() -> u8 {
    5
}

/// A template that cannot be found or read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No template by that name.
    #[error("unknown pipeline template {name:?} (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names available.
        known: String,
    },
    /// The file does not parse or the definition is invalid.
    #[error("pipeline template {name}: {message}")]
    Invalid {
        /// The template.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl Template {
    /// Parses and validates a template.
    pub fn parse(name: &str, toml_text: &str) -> Result<Template, TemplateError> {
        let t: Template = toml::from_str(toml_text).map_err(|e| TemplateError::Invalid {
            name: name.to_string(),
            message: one_line(&e.to_string()),
        })?;
        t.instantiate(Object::new())
            .validate()
            .map_err(|e| TemplateError::Invalid {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        Ok(t)
    }

    /// A pipeline of this template with `input` as its `input_data`, ready to submit.
    pub fn instantiate(&self, input: Object) -> Pipeline {
        Pipeline {
            name: self.name.clone(),
            description: self.description.clone(),
            pipeline_type: self.pipeline_type,
            configuration: self.configuration.clone(),
            error_strategy: self.error_strategy.clone(),
            priority: self.priority,
            security_level: self.security_level,
            input_data: input,
            ..Default::default()
        }
    }
}

/// The template called `name`: from `dir` (`{dir}/{name}.toml`) when given and present,
/// else built in.
pub fn template(name: &str, dir: Option<&Path>) -> Result<Template, TemplateError> {
    if let Some(dir) = dir {
        let path = dir.join(format!("{name}.toml"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Template::parse(name, &text);
        }
    }
    match BUILT_IN.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => Template::parse(n, text),
        None => Err(TemplateError::Unknown {
            name: name.to_string(),
            known: BUILT_IN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_parse_and_validate() {
        for (name, _) in BUILT_IN {
            let t = template(name, None).unwrap();
            assert_eq!(t.pipeline_type.as_str(), *name);
        }
        let mh = template("mental_health_analysis", None).unwrap();
        assert_eq!(mh.configuration.stages.len(), 6);
        let parallel: Vec<u32> = mh
            .configuration
            .stages
            .iter()
            .filter(|s| s.dependencies == [1])
            .map(|s| s.stage)
            .collect();
        assert_eq!(parallel, [2, 3], "two branches after preprocessing");
    }

    #[test]
    fn unknown_names_and_bad_files_are_clear() {
        let e = template("nope", None).unwrap_err().to_string();
        assert!(e.contains("unknown pipeline template \"nope\""), "{e}");
        assert!(e.contains("mental_health_analysis"), "{e}");
        let e = Template::parse(
            "x",
            "type = \"custom\"\nname = \"x\"\ncolour = 1\n[configuration]\nstages = []",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Template::parse(
            "x",
            "type = \"custom\"\nname = \"x\"\n[configuration]\nstages = []",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pipeline has no stages"), "{e}");
    }
}
