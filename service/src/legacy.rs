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
    let Some(root) = config.as_object() else {
        return Ported::Unportable("config is not a JSON object");
    };
    let Some(ai) = root.get("ai") else {
        return Ported::Unchanged;
    };
    let Some(ai) = ai.as_object() else {
        return Ported::Unportable("ai is not an object");
    };
    if ai.get("runner").is_some_and(|r| !r.is_object()) {
        return Ported::Unportable("ai.runner is not an object");
    }
    if ai.get("runner_config").is_some_and(|r| !r.is_object()) {
        return Ported::Unportable("ai.runner_config is not an object");
    }
    let mut ai = ai.clone();
    let mut runner = take_object(&mut ai, "runner");
    let mut runner_config = take_object(&mut ai, "runner_config");

    let legacy = runner
        .get("runner")
        .and_then(Value::as_str)
        .and_then(|name| Some((name.to_owned(), legacy_runner_id(name)?)));
    if let Some((name, id)) = legacy {
        if runner.get("id").is_none_or(Value::is_null) {
            runner.remove("runner");
            runner.insert("id".into(), id.into());
        }
        if !runner_config.contains_key(id)
            && let Some(block) = ai.get(&name).and_then(Value::as_object)
        {
            runner_config.insert(id.to_owned(), normalize_block(&name, block));
        }
        ai.remove(&name);
    }
    ai.insert("runner".into(), Value::Object(runner));
    ai.insert("runner_config".into(), Value::Object(runner_config));

    let mut out = root.clone();
    out.insert("ai".into(), Value::Object(ai));
    let out = Value::Object(out);
    if &out == config {
        Ported::Unchanged
    } else {
        Ported::Changed(out)
    }
}

fn take_object(map: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match map.remove(key) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

/// A legacy block in the shape its plugin runner expects (rule 3): only
/// `local-agent` changes.
pub fn normalize_block(name: &str, block: &Map<String, Value>) -> Value {
    let mut block = block.clone();
    if name == "local-agent" {
        if let Some(Value::String(model)) = block.get("model") {
            let model = model.clone();
            block.insert("model".into(), json!({"primary": model, "fallbacks": []}));
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
