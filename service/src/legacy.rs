//! Porting LangBot's legacy runner blocks to plugin runner ids (SPEC
//! section 6), and reading a pipeline config's runner either way.
//!
//! Pure functions on JSON values: the data migration applies [`port_config`]
//! to every stored pipeline, and services call [`read_runner`] on configs
//! that may not have been ported yet.

use serde_json::{Map, Value, json};

/// Legacy runner names and the plugin runner ids that replaced them.
pub const LEGACY_RUNNER_IDS: &[(&str, &str)] = &[
    ("local-agent", "plugin:langbot/local-agent/default"),
    ("dify-service-api", "plugin:langbot/dify-agent/default"),
    ("n8n-service-api", "plugin:langbot/n8n-agent/default"),
    ("coze-api", "plugin:langbot/coze-agent/default"),
    (
        "dashscope-app-api",
        "plugin:langbot/dashscope-agent/default",
    ),
    ("deerflow-api", "plugin:langbot/deerflow-agent/default"),
    ("langflow-api", "plugin:langbot/langflow-agent/default"),
    ("tbox-app-api", "plugin:langbot/tbox-agent/default"),
    ("weknora-api", "plugin:langbot/weknora-agent/default"),
];

/// The plugin runner id of a legacy runner name.
pub fn legacy_runner_id(name: &str) -> Option<&'static str> {
    LEGACY_RUNNER_IDS
        .iter()
        .find(|(legacy, _)| *legacy == name)
        .map(|(_, id)| *id)
}

/// What porting one config did.
#[derive(Clone, Debug, PartialEq)]
pub enum Ported {
    /// Already in the current shape (or has no `ai`): nothing to write.
    Unchanged,
    /// The ported config, to write back.
    Changed(Value),
    /// A shape the rules cannot apply to; the config must stay as it is.
    Unportable(&'static str),
}

/// Ports one config (rules 1–3 and 5 of SPEC section 6).
pub fn port_config(config: &Value) -> Ported {
    let mut ported = config.clone();
    match port_in_place(&mut ported) {
        Ok(true) => Ported::Changed(ported),
        Ok(false) => Ported::Unchanged,
        Err(reason) => Ported::Unportable(reason),
    }
}

/// [`port_config`] without copies, for the data migration: ports `config`
/// in place and says whether it changed. On `Err` (a shape the rules cannot
/// apply to) `config` is untouched.
///
/// # Errors
/// Why the rules cannot apply: `ai`, `ai.runner` or `ai.runner_config` is not
/// an object, or the config itself is not.
pub fn port_in_place(config: &mut Value) -> Result<bool, &'static str> {
    let root = config
        .as_object_mut()
        .ok_or("config is not a JSON object")?;
    let Some(ai) = root.get_mut("ai") else {
        return Ok(false);
    };
    let ai = ai.as_object_mut().ok_or("ai is not an object")?;
    if ai.get("runner").is_some_and(|r| !r.is_object()) {
        return Err("ai.runner is not an object");
    }
    if ai.get("runner_config").is_some_and(|r| !r.is_object()) {
        return Err("ai.runner_config is not an object");
    }
    let mut changed = false;
    for key in ["runner", "runner_config"] {
        if !ai.contains_key(key) {
            ai.insert(key.into(), Value::Object(Map::new()));
            changed = true;
        }
    }
    let legacy = ai
        .get("runner")
        .and_then(|r| r.get("runner"))
        .and_then(Value::as_str)
        .and_then(|name| Some((name.to_owned(), legacy_runner_id(name)?)));
    let Some((name, id)) = legacy else {
        return Ok(changed);
    };
    if let Some(Value::Object(runner)) = ai.get_mut("runner")
        && runner.get("id").is_none_or(Value::is_null)
    {
        runner.remove("runner");
        runner.insert("id".into(), id.into());
        changed = true;
    }
    let block = ai.remove(&name);
    changed |= block.is_some();
    if let Some(Value::Object(runner_config)) = ai.get_mut("runner_config")
        && !runner_config.contains_key(id)
        && let Some(Value::Object(block)) = block
    {
        runner_config.insert(id.to_owned(), normalize_owned(&name, block));
        changed = true;
    }
    Ok(changed)
}

/// A legacy block in the shape its plugin runner expects (rule 3): only
/// `local-agent` changes.
pub fn normalize_block(name: &str, block: &Map<String, Value>) -> Value {
    normalize_owned(name, block.clone())
}

fn normalize_owned(name: &str, mut block: Map<String, Value>) -> Value {
    if name == "local-agent" {
        if let Some(slot) = block.get_mut("model")
            && let Value::String(model) = slot
        {
            let model = std::mem::take(model);
            *slot = json!({"primary": model, "fallbacks": []});
        }
        if let Some(kb) = block.remove("knowledge-base")
            && let Value::String(kb) = kb
            && !block.contains_key("knowledge-bases")
        {
            let bases = match kb.as_str() {
                "" | "__none__" | "__none" => json!([]),
                _ => json!([kb]),
            };
            block.insert("knowledge-bases".into(), bases);
        }
    }
    Value::Object(block)
}

/// A config's runner, as services read it (rule 4).
#[derive(Clone, Debug, PartialEq)]
pub struct RunnerChoice {
    /// `ai.runner.id`, else the mapped legacy name, else none.
    pub runner_id: Option<String>,
    /// `ai.runner_config[id]`, else the normalised legacy block of the runner
    /// with that id, else `{}`; none when there is no runner id.
    pub runner_config: Option<Value>,
    /// `ai.runner.expire-time`, default 0.
    pub expire_time: i64,
}

/// Reads the runner of a config, ported or not.
pub fn read_runner(config: &Value) -> RunnerChoice {
    let ai = config.get("ai").and_then(Value::as_object);
    let runner = ai
        .and_then(|ai| ai.get("runner"))
        .and_then(Value::as_object);
    let expire_time = runner
        .and_then(|r| r.get("expire-time"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let runner_id = runner
        .and_then(|r| r.get("id"))
        .and_then(Value::as_str)
        .or_else(|| {
            runner
                .and_then(|r| r.get("runner"))
                .and_then(Value::as_str)
                .and_then(legacy_runner_id)
        })
        .map(str::to_owned);
    let runner_config = runner_id.as_deref().map(|id| {
        let ported = ai
            .and_then(|ai| ai.get("runner_config"))
            .and_then(Value::as_object)
            .and_then(|rc| rc.get(id))
            .cloned();
        // Not ported yet: the legacy block of the runner with that id.
        let legacy = || {
            let (name, _) = LEGACY_RUNNER_IDS
                .iter()
                .find(|(_, legacy_id)| *legacy_id == id)?;
            let block = ai?.get(*name)?.as_object()?;
            Some(normalize_block(name, block))
        };
        ported.or_else(legacy).unwrap_or_else(|| json!({}))
    });
    RunnerChoice {
        runner_id,
        runner_config,
        expire_time,
    }
}
