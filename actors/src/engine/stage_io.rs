//! What a stage reads and writes: its input (pipeline input and dependency outputs), its tasks
//! (one, or one per fan-out item), its output (fan-in) and the quality check of a result.

use super::*;

/// The input object of a stage (see the module doc).
pub fn stage_input(p: &Pipeline, def: &StageDefinition) -> Object {
    let mut deps = Object::new();
    for d in &def.dependencies {
        if let Some(dep) = p.configuration.stages.iter().find(|s| s.stage == *d) {
            let out = p
                .intermediate_results
                .get(&dep.name)
                .cloned()
                .unwrap_or(Value::Null);
            deps.insert(dep.name.clone(), out);
        }
    }
    obj([
        ("pipeline", Value::Object(p.input_data.clone())),
        ("dependencies", Value::Object(deps)),
    ])
}

/// The tasks of one run of a stage: one, or one per item of its fan-out list.
pub fn stage_tasks(
    p: &Pipeline,
    def: &StageDefinition,
    attempt: u32,
    now: Timestamp,
) -> Result<Vec<Task>, String> {
    let input = stage_input(p, def);
    let items: Option<Vec<Value>> = match &def.fan_out {
        None => None,
        Some(pointer) => match Value::Object(input.clone()).pointer(pointer) {
            Some(Value::Array(items)) => Some(items.clone()),
            Some(other) => {
                return Err(format!(
                    "stage {}: fan_out {pointer:?} names a {}, not a list",
                    def.stage,
                    json_kind(other)
                ))
            }
            None => {
                return Err(format!(
                    "stage {}: fan_out {pointer:?} names nothing in the stage input",
                    def.stage
                ))
            }
        },
    };
    let dependents: Vec<u32> = p
        .configuration
        .stages
        .iter()
        .filter(|s| s.dependencies.contains(&def.stage))
        .map(|s| s.stage)
        .collect();
    // A fan-out task carries its item, not the whole list: the list is left out (null) of its
    // copy of the stage input, or n tasks would carry n items each.
    let input = match &def.fan_out {
        Some(pointer) => {
            let mut slim = Value::Object(input);
            if let Some(list) = slim.pointer_mut(pointer) {
                *list = Value::Null;
            }
            match slim {
                Value::Object(o) => o,
                _ => Object::new(),
            }
        }
        None => input,
    };
    let make = |index: Option<u32>, item: Option<Value>| {
        let mut input_data = input.clone();
        if let (Some(i), Some(item)) = (index, item) {
            input_data.insert("item".into(), item);
            input_data.insert("item_index".into(), i.into());
        }
        let mut expected_output = Object::new();
        if !p.configuration.quality_thresholds.is_empty() {
            expected_output.insert(
                "quality_thresholds".into(),
                Value::Object(p.configuration.quality_thresholds.clone()),
            );
        }
        Task {
            task_id: new_id("task"),
            pipeline_id: p.pipeline_id.clone(),
            stage: def.stage,
            task_type: def.task_type.clone(),
            max_retries: def.retry_config.max_retries,
            parameters: obj([("timeout_seconds", def.timeout_seconds.into())]),
            input_data,
            expected_output: (!expected_output.is_empty()).then_some(expected_output),
            priority: p.priority.clamp(1, 10),
            deadline: p.deadline,
            deadline_at: p.deadline,
            pipeline_context: PipelineContext {
                stage_name: def.name.clone(),
                stage_dependencies: def.dependencies.clone(),
                is_critical_path: false,
                attempt,
                item_index: index,
            },
            dependent_tasks: Vec::new(),
            tags: p.tags.clone(),
            created_at: now,
            updated_at: now,
            created_by: p.created_by.clone(),
            metadata: obj([("dependent_stages", json!(dependents))]),
            ..Default::default()
        }
    };
    Ok(match items {
        None => vec![make(None, None)],
        Some(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| make(Some(i as u32), Some(item)))
            .collect(),
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// A stage's output from its tasks (see the module doc).
pub fn stage_output(def: &StageDefinition, tasks: &[Task]) -> Value {
    let out = |t: &Task| {
        t.output_data
            .clone()
            .or_else(|| t.result.clone())
            .map(Value::Object)
            .unwrap_or(Value::Null)
    };
    if def.fan_out.is_some() {
        let mut done: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Completed)
            .collect();
        done.sort_by_key(|t| t.pipeline_context.item_index);
        json!({ "items": done.into_iter().map(out).collect::<Vec<_>>() })
    } else {
        tasks
            .iter()
            .find(|t| t.status == TaskStatus::Completed)
            .map(out)
            .unwrap_or(Value::Null)
    }
}

/// Whether a completed task's reported quality meets the thresholds it was created with.
/// A score named by a threshold but missing from the result fails it.
pub fn meets_quality(task: &Task) -> Result<(), String> {
    let Some(thresholds) = task
        .expected_output
        .as_ref()
        .and_then(|e| e.get("quality_thresholds"))
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    let scores = task.quality_scores.clone().unwrap_or_default();
    for (name, min) in thresholds {
        let Some(min) = min.as_f64() else { continue };
        let got = match name.as_str() {
            "accuracy" => scores.accuracy,
            "completeness" => scores.completeness,
            "relevance" => scores.relevance,
            "overall" => scores.overall,
            _ => None,
        };
        match got {
            Some(v) if v >= min => {}
            Some(v) => return Err(format!("quality {name} {v} is below the threshold {min}")),
            None => return Err(format!("quality {name} missing; the threshold is {min}")),
        }
    }
    Ok(())
}
