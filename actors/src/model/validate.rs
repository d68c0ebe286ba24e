//! Pipeline-definition validation: every problem found, each naming its stage.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{Pipeline, PipelineConfiguration, StageDefinition};

/// Longest stage timeout accepted: seven days.
pub const MAX_TIMEOUT_SECONDS: u32 = 7 * 24 * 3600;
/// Most retries accepted per task.
pub const MAX_RETRIES: u32 = 100;
/// Longest base retry delay accepted: one day.
pub const MAX_DELAY_SECONDS: u32 = 24 * 3600;
/// Most stages in one pipeline.
pub const MAX_STAGES: usize = 256;

/// One thing wrong with a pipeline definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// No stages at all.
    #[error("pipeline has no stages")]
    NoStages,
    /// More stages than [`MAX_STAGES`].
    #[error("pipeline has {0} stages (at most {MAX_STAGES})")]
    TooManyStages(usize),
    /// Stage number 0.
    #[error("stage {name:?}: stage number must be 1 or more")]
    ZeroStage {
        /// The stage's name.
        name: String,
    },
    /// Two stages share a number.
    #[error("stage {stage}: stage number used more than once")]
    DuplicateStage {
        /// The number.
        stage: u32,
    },
    /// A required field is empty.
    #[error("stage {stage}: {field} must not be empty")]
    Empty {
        /// The stage.
        stage: u32,
        /// The field.
        field: &'static str,
    },
    /// A dependency names no stage.
    #[error("stage {stage}: depends on stage {missing}, which does not exist")]
    UnknownDependency {
        /// The stage.
        stage: u32,
        /// The missing one.
        missing: u32,
    },
    /// A stage depends on itself.
    #[error("stage {stage}: depends on itself")]
    SelfDependency {
        /// The stage.
        stage: u32,
    },
    /// The dependencies form a cycle.
    #[error("stages {}: dependency cycle", fmt_cycle(.cycle))]
    Cycle {
        /// The stages on the cycle, first repeated at the end.
        cycle: Vec<u32>,
    },
    /// A number out of its range.
    #[error("stage {stage}: {field} = {value} is out of range ({min}..={max})")]
    OutOfRange {
        /// The stage (0 for pipeline-level fields).
        stage: u32,
        /// The field.
        field: &'static str,
        /// What was given.
        value: u64,
        /// Lowest allowed.
        min: u64,
        /// Highest allowed.
        max: u64,
    },
    /// A pipeline-level field is invalid.
    #[error("{field}: {message}")]
    Pipeline {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn fmt_cycle(cycle: &[u32]) -> String {
    cycle
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Every problem with a definition, in stage order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pipeline definition: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl PipelineConfiguration {
    /// Checks the stage DAG and every stage's settings; returns all problems found.
    pub fn validate(&self) -> Result<(), DefinitionErrors> {
        let mut errors = Vec::new();
        if self.stages.is_empty() {
            errors.push(DefinitionError::NoStages);
        }
        if self.stages.len() > MAX_STAGES {
            errors.push(DefinitionError::TooManyStages(self.stages.len()));
        }
        let mut seen = BTreeSet::new();
        for s in &self.stages {
            if s.stage == 0 {
                errors.push(DefinitionError::ZeroStage {
                    name: s.name.clone(),
                });
            } else if !seen.insert(s.stage) {
                errors.push(DefinitionError::DuplicateStage { stage: s.stage });
            }
        }
        let mut names = BTreeSet::new();
        for s in &self.stages {
            if !s.name.trim().is_empty() && !names.insert(s.name.as_str()) {
                errors.push(DefinitionError::Pipeline {
                    field: "name",
                    message: format!(
                        "stage {}: name {:?} is used by another stage (names key stage outputs)",
                        s.stage, s.name
                    ),
                });
            }
            check_stage(s, &seen, &mut errors);
        }
        if let Err(cycle) = self.topological_order() {
            errors.push(DefinitionError::Cycle { cycle });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// Stage numbers in an order where every stage follows its dependencies (ties by number);
    /// on a cycle, the stages forming it. Unknown dependencies are ignored here.
    pub fn topological_order(&self) -> Result<Vec<u32>, Vec<u32>> {
        let deps: BTreeMap<u32, Vec<u32>> = self
            .stages
            .iter()
            .map(|s| (s.stage, s.dependencies.clone()))
            .collect();
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut mark: BTreeMap<u32, u8> = deps.keys().map(|&k| (k, 0)).collect();
        let mut order = Vec::with_capacity(deps.len());
        for &start in deps.keys() {
            let mut path = Vec::new();
            visit(start, &deps, &mut mark, &mut path, &mut order)?;
        }
        Ok(order)
    }
}

fn visit(
    node: u32,
    deps: &BTreeMap<u32, Vec<u32>>,
    mark: &mut BTreeMap<u32, u8>,
    path: &mut Vec<u32>,
    order: &mut Vec<u32>,
) -> Result<(), Vec<u32>> {
    match mark.get(&node) {
        None | Some(2) => return Ok(()),
        Some(1) => {
            let from = path.iter().position(|&n| n == node).unwrap_or(0);
            let mut cycle = path[from..].to_vec();
            cycle.push(node);
            return Err(cycle);
        }
        _ => {}
    }
    mark.insert(node, 1);
    path.push(node);
    for &d in deps.get(&node).into_iter().flatten() {
        if d != node {
            visit(d, deps, mark, path, order)?;
        }
    }
    path.pop();
    mark.insert(node, 2);
    order.push(node);
    Ok(())
}

fn check_stage(s: &StageDefinition, known: &BTreeSet<u32>, errors: &mut Vec<DefinitionError>) {
    let stage = s.stage;
    if s.name.trim().is_empty() {
        errors.push(DefinitionError::Empty {
            stage,
            field: "name",
        });
    }
    if s.task_type.trim().is_empty() {
        errors.push(DefinitionError::Empty {
            stage,
            field: "task_type",
        });
    }
    for &d in &s.dependencies {
        if d == stage {
            errors.push(DefinitionError::SelfDependency { stage });
        } else if !known.contains(&d) {
            errors.push(DefinitionError::UnknownDependency { stage, missing: d });
        }
    }
    if let Some(pointer) = &s.fan_out {
        if !pointer.starts_with('/') {
            errors.push(DefinitionError::Pipeline {
                field: "fan_out",
                message: format!(
                    "stage {stage}: {pointer:?} is not a JSON pointer (it starts with '/')"
                ),
            });
        }
    }
    let mut range = |field, value: u32, min: u32, max: u32| {
        if value < min || value > max {
            errors.push(DefinitionError::OutOfRange {
                stage,
                field,
                value: value.into(),
                min: min.into(),
                max: max.into(),
            });
        }
    };
    range("timeout_seconds", s.timeout_seconds, 1, MAX_TIMEOUT_SECONDS);
    let r = &s.retry_config;
    range("retry_config.max_retries", r.max_retries, 0, MAX_RETRIES);
    range(
        "retry_config.delay_seconds",
        r.delay_seconds,
        0,
        MAX_DELAY_SECONDS,
    );
    if let Some(cap) = r.max_delay_seconds {
        range(
            "retry_config.max_delay_seconds",
            cap,
            r.delay_seconds,
            MAX_DELAY_SECONDS.max(r.delay_seconds),
        );
    }
}

impl Pipeline {
    /// Validates the definition and the pipeline-level settings (priority, deadline, error
    /// strategy, quality thresholds).
    pub fn validate(&self) -> Result<(), DefinitionErrors> {
        let mut errors = match self.configuration.validate() {
            Ok(()) => Vec::new(),
            Err(DefinitionErrors(e)) => e,
        };
        if !(1..=10).contains(&self.priority) {
            errors.push(DefinitionError::OutOfRange {
                stage: 0,
                field: "priority",
                value: self.priority.into(),
                min: 1,
                max: 10,
            });
        }
        if let (Some(start), Some(deadline)) = (self.scheduled_start, self.deadline) {
            if deadline <= start {
                errors.push(DefinitionError::Pipeline {
                    field: "deadline",
                    message: format!("{deadline} is not after scheduled_start {start}"),
                });
            }
        }
        for (name, value) in &self.configuration.quality_thresholds {
            match value.as_f64() {
                Some(v) if (0.0..=1.0).contains(&v) => {}
                _ => errors.push(DefinitionError::Pipeline {
                    field: "configuration.quality_thresholds",
                    message: format!("{name} must be a number between 0.0 and 1.0, got {value}"),
                }),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DefinitionErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RetryConfig;

    fn stage(n: u32, deps: &[u32]) -> StageDefinition {
        StageDefinition {
            stage: n,
            name: format!("s{n}"),
            task_type: "general".into(),
            dependencies: deps.to_vec(),
            is_parallel: false,
            timeout_seconds: 60,
            retry_config: RetryConfig::default(),
            fan_out: None,
        }
    }

    fn config(stages: Vec<StageDefinition>) -> PipelineConfiguration {
        PipelineConfiguration {
            stages,
            ..Default::default()
        }
    }

    #[test]
    fn a_diamond_is_valid_and_ordered() {
        let c = config(vec![
            stage(4, &[2, 3]),
            stage(1, &[]),
            stage(2, &[1]),
            stage(3, &[1]),
        ]);
        c.validate().unwrap();
        assert_eq!(c.topological_order().unwrap(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn every_error_names_its_stage() {
        let mut bad_retry = stage(3, &[9]);
        bad_retry.retry_config.max_retries = 1_000;
        bad_retry.timeout_seconds = 0;
        let mut dup = stage(1, &[]);
        dup.task_type = String::new();
        let c = config(vec![stage(1, &[]), dup, stage(2, &[2]), bad_retry]);
        let errs = c.validate().unwrap_err();
        let text = errs.to_string();
        assert!(
            text.contains("stage 1: stage number used more than once"),
            "{text}"
        );
        assert!(
            text.contains("stage 1: task_type must not be empty"),
            "{text}"
        );
        assert!(text.contains("stage 2: depends on itself"), "{text}");
        assert!(
            text.contains("stage 3: depends on stage 9, which does not exist"),
            "{text}"
        );
        assert!(
            text.contains("stage 3: timeout_seconds = 0 is out of range"),
            "{text}"
        );
        assert!(
            text.contains("stage 3: retry_config.max_retries = 1000"),
            "{text}"
        );
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let c = config(vec![stage(1, &[3]), stage(2, &[1]), stage(3, &[2])]);
        let errs = c.validate().unwrap_err();
        assert!(
            errs.0
                .iter()
                .any(|e| matches!(e, DefinitionError::Cycle { cycle } if cycle.len() == 4)),
            "{errs}"
        );
        assert!(errs.to_string().contains("dependency cycle"));
    }

    #[test]
    fn empty_and_pipeline_level_errors() {
        assert_eq!(
            config(vec![]).validate().unwrap_err().0,
            vec![DefinitionError::NoStages]
        );
        let mut p = Pipeline {
            configuration: config(vec![stage(1, &[])]),
            priority: 11,
            ..Default::default()
        };
        p.configuration
            .quality_thresholds
            .insert("overall".into(), serde_json::json!(1.5));
        let text = p.validate().unwrap_err().to_string();
        assert!(
            text.contains("priority = 11 is out of range (1..=10)"),
            "{text}"
        );
        assert!(
            text.contains("overall must be a number between 0.0 and 1.0"),
            "{text}"
        );
        p.priority = 5;
        p.configuration.quality_thresholds.clear();
        p.validate().unwrap();
    }
}
