//! A `[presets.NAME]` table turned into a core preset, with errors that name the key.

use moa_core::{AgentSpec, ModelRef, PolicyChanges, Preset, PromptStyle, RunPolicy};

use super::file::{AgentEntry, PolicyEntry, PresetEntry};

type KeyError = (String, String);

fn agent(entry: &AgentEntry, key: String, preset: &PresetEntry) -> Result<AgentSpec, KeyError> {
    ModelRef::parse(&entry.model).map_err(|e| (format!("{key}.model"), e.to_string()))?;
    let extra = serde_json::to_value(&entry.extra)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    if let Some(field) = extra
        .keys()
        .find(|k| moa_providers::openai::wire::RESERVED_FIELDS.contains(&k.as_str()))
    {
        return Err((
            format!("{key}.extra.{field}"),
            "this field is set by moa itself".into(),
        ));
    }
    Ok(AgentSpec {
        model: entry.model.clone(),
        temperature: entry.temperature.or(preset.temperature),
        max_tokens: entry.max_tokens.or(preset.max_tokens),
        system: entry.system.clone(),
        extra,
    })
}

/// Converts `[presets.NAME]`.
/// `policy_below` is the run policy the preset's own policy keys are written over.
pub fn convert(
    name: &str,
    entry: &PresetEntry,
    policy_below: RunPolicy,
) -> Result<Preset, KeyError> {
    let key = format!("presets.{name}");
    let layers = match (&entry.proposers, &entry.layer) {
        (Some(_), Some(_)) => {
            return Err((
                format!("{key}.layer"),
                "give either `proposers` (with `layers`) or `[[layer]]` tables, not both".into(),
            ))
        }
        (Some(proposers), None) => {
            let count = entry.layers.unwrap_or(2);
            if count == 0 {
                return Err((format!("{key}.layers"), "must be at least 1".into()));
            }
            let agents = proposers
                .iter()
                .enumerate()
                .map(|(i, a)| agent(a, format!("{key}.proposers[{i}]"), entry))
                .collect::<Result<Vec<_>, _>>()?;
            if agents.is_empty() && count > 1 {
                return Err((format!("{key}.proposers"), "is empty".into()));
            }
            vec![agents; count - 1]
        }
        (None, Some(layers)) => {
            if entry.layers.is_some() {
                return Err((
                    format!("{key}.layers"),
                    "`layers` goes with `proposers`; with [[layer]] tables the count is theirs"
                        .into(),
                ));
            }
            let mut out = Vec::new();
            for (l, layer) in layers.iter().enumerate() {
                if layer.proposers.is_empty() {
                    return Err((format!("{key}.layer[{l}].proposers"), "is empty".into()));
                }
                let agents = layer
                    .proposers
                    .iter()
                    .enumerate()
                    .map(|(i, a)| agent(a, format!("{key}.layer[{l}].proposers[{i}]"), entry))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(agents);
            }
            out
        }
        (None, None) => Vec::new(),
    };
    let prompt_style = match &entry.prompt_style {
        None => PromptStyle::Reference,
        Some(s) => PromptStyle::parse(s).map_err(|e| (format!("{key}.prompt_style"), e))?,
    };
    Ok(Preset {
        name: name.to_string(),
        description: entry.description.clone().unwrap_or_default(),
        layers,
        aggregator: agent(&entry.aggregator, format!("{key}.aggregator"), entry)?,
        prompt_style,
        policy: policy(
            &format!("{key}.policy"),
            entry.policy.as_ref(),
            policy_below,
        )?,
    })
}

/// The run policy `entry` (under `key`) writes over `lower`.
pub fn policy(
    key: &str,
    entry: Option<&PolicyEntry>,
    lower: RunPolicy,
) -> Result<RunPolicy, KeyError> {
    let Some(entry) = entry else {
        return Ok(lower);
    };
    let deadline = entry
        .deadline
        .map(std::time::Duration::try_from_secs_f64)
        .transpose()
        .map_err(|_| {
            (
                format!("{key}.deadline"),
                "must be seconds, more than 0".into(),
            )
        })?;
    let changes = PolicyChanges {
        quorum: entry.quorum,
        grace: entry.grace_ms.map(std::time::Duration::from_millis),
        early_exit: entry.early_exit,
        fallback: entry.fallback,
        max_cost: entry.max_cost,
        max_tokens_total: entry.max_tokens_total,
        deadline,
        reference_max_tokens: entry.reference_max_tokens,
        aggregate_window: entry.aggregate_window,
    };
    // The message starts with the setting's name; the key error carries the whole path.
    changes
        .apply(lower, |name| format!("{key}.{name}"))
        .map_err(|message| {
            let (path, rest) = message.split_once(' ').unwrap_or((&message, ""));
            (path.to_string(), rest.to_string())
        })
}
