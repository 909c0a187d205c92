//! Values read back exactly, on every backend (SPEC section 5, "Values"):
//! texts LangBot's Python wrote (`tests/data/python_values.json`, made by
//! `scripts/make-python-value-vectors.py` with Python's own `json.dumps`)
//! read back to the value Python meant, bit for bit; random values of every
//! shape round-trip through `set` and `get`; what cannot be represented is a
//! typed error naming the key, never a changed or dropped value.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Map, Value};
use service::value::{MAX_VALUE_DEPTH, ValueError, decode};
use service::{
    Actor, Binding, Event, IdentityColumns, Scope, StateContext, StateError, StatePolicy,
};
use testkit::{SplitMix64, TestDb, on_every_store_topology};

fn ctx() -> StateContext {
    let event = Event {
        bot_id: Some("bot-1".into()),
        conversation_id: Some("conv-values".into()),
        actor: Some(Actor {
            actor_type: None,
            actor_id: Some("alice".into()),
        }),
        ..Event::default()
    };
    let binding = Binding {
        binding_id: Some("pipeline-values".into()),
        ..Binding::default()
    };
    StateContext::new(IdentityColumns::from_event(
        "plugin:langbot/local-agent/default",
        &binding,
        &event,
    ))
}

/// Whether `a` and `b` are the same value: same kinds (an integer is not a
/// float, `true` is not `1`), floats equal bit for bit (so `-0.0` is not
/// `0.0`). Iterative: values may be nested 1000 deep.
fn exactly_equal(a: &Value, b: &Value) -> Result<(), String> {
    let mut stack = vec![(a, b, String::new())];
    while let Some((a, b, path)) = stack.pop() {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let same = if x.is_f64() || y.is_f64() {
                    x.is_f64()
                        && y.is_f64()
                        && x.as_f64().unwrap().to_bits() == y.as_f64().unwrap().to_bits()
                } else {
                    x.as_i64() == y.as_i64() && x.as_u64() == y.as_u64()
                };
                if !same {
                    return Err(format!("at {path}: {x} != {y}"));
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    stack.push((x, y, format!("{path}[{i}]")));
                }
            }
            (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
                for (k, x) in x {
                    let Some(y) = y.get(k) else {
                        return Err(format!("at {path}: key {k:?} missing"));
                    };
                    stack.push((x, y, format!("{path}.{k}")));
                }
            }
            (x, y) if x == y && !x.is_array() && !x.is_object() => {}
            (x, y) => return Err(format!("at {path}: {x} != {y}")),
        }
    }
    Ok(())
}

/// The value Python meant, from the vector file's typed form.
fn meant(typed: &Value) -> Value {
    let v = &typed["v"];
    match typed["t"].as_str().unwrap() {
        "null" => Value::Null,
        "bool" => Value::Bool(v.as_bool().unwrap()),
        "str" => Value::String(v.as_str().unwrap().to_owned()),
        "int" => {
            let digits = v.as_str().unwrap();
            if digits.starts_with('-') {
                Value::from(digits.parse::<i64>().unwrap())
            } else {
                Value::from(digits.parse::<u64>().unwrap())
            }
        }
        "float" => {
            let bits = u64::from_str_radix(typed["bits"].as_str().unwrap(), 16).unwrap();
            Value::from(f64::from_bits(bits))
        }
        "list" => Value::Array(v.as_array().unwrap().iter().map(meant).collect()),
        "dict" => Value::Object(
            v.as_array()
                .unwrap()
                .iter()
                .map(|kv| (kv[0].as_str().unwrap().to_owned(), meant(&kv[1])))
                .collect(),
        ),
        "deep" => {
            let mut value = meant(&typed["leaf"]);
            for _ in 0..typed["depth"].as_u64().unwrap() {
                value = if typed["kind"] == "list" {
                    Value::Array(vec![value])
                } else {
                    Value::Object(Map::from_iter([("k".to_owned(), value)]))
                };
            }
            value
        }
        other => panic!("unknown typed form {other}"),
    }
}

fn python_cases() -> Vec<(String, Value)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/python_values.json");
    let file = decode(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases: Vec<(String, Value)> = file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_owned(), meant(&c["value"])))
        .collect();
    assert!(
        cases.len() > 500,
        "python_values.json holds {}",
        cases.len()
    );
    cases
}

/// Inserts a row the way LangBot does: the text as Python wrote it.
async fn insert_as_langbot(t: &TestDb, ctx: &StateContext, key: &str, text: &str) {
    let backend = t.db.get_database_backend();
    let c = ctx.columns();
    let p = |n| match backend {
        sea_orm::DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    };
    let sql = format!(
        "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, state_key, \
         value_json, bot_id, conversation_id, created_at, updated_at) VALUES ({}, {}, 'conversation', \
         {}, {}, {}, {}, {}, '2025-01-01 00:00:00', '2025-01-01 00:00:00')",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7)
    );
    t.db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            c.runner_id.as_str().into(),
            c.binding_identity.as_str().into(),
            ctx.scope_key(Scope::Conversation).unwrap().into(),
            key.into(),
            text.into(),
            c.bot_id.clone().into(),
            c.conversation_id.clone().into(),
        ],
    ))
    .await
    .unwrap_or_else(|e| panic!("insert {key}: {e}"));
}

async fn python_texts_read_back_exactly(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let c = ctx();
    let cases = python_cases();
    for (i, (text, _)) in cases.iter().enumerate() {
        insert_as_langbot(&t, &c, &format!("py-{i:04}"), text).await;
    }
    let store = t.store();
    let mut failures = Vec::new();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let got = store
            .get(&c, Scope::Conversation, &format!("py-{i:04}"))
            .await
            .unwrap_or_else(|e| panic!("py-{i:04} ({text}): {e}"))
            .expect("stored");
        if let Err(e) = exactly_equal(&got, expected) {
            failures.push(format!("py-{i:04} {text:.80}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The snapshot holds every key, each with the same value.
    let snap = store
        .snapshot(&c, &StatePolicy::all_scopes())
        .await
        .unwrap();
    let conversation = &snap[&Scope::Conversation];
    for (i, (_, expected)) in cases.iter().enumerate() {
        let key = format!("py-{i:04}");
        let got = conversation
            .get(&key)
            .unwrap_or_else(|| panic!("{key} dropped"));
        exactly_equal(got, expected).unwrap_or_else(|e| panic!("snapshot {key}: {e}"));
    }
    // A read-modify-write from Rust stores what LangBot will read as the same
    // numbers: the text Rust writes parses back, bit for bit, to the value.
    for (i, (_, expected)) in cases.iter().enumerate().step_by(7) {
        let key = format!("py-{i:04}");
        store
            .set(&c, Scope::Conversation, &key, expected)
            .await
            .unwrap();
        let got = store
            .get(&c, Scope::Conversation, &key)
            .await
            .unwrap()
            .unwrap();
        exactly_equal(&got, expected).unwrap_or_else(|e| panic!("rewritten {key}: {e}"));
    }
}

/// The property test's generator, on testkit's SplitMix64.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    fn float(&mut self) -> f64 {
        let f = match self.below(6) {
            // Any bit pattern: subnormals, huge and tiny exponents.
            0 | 1 => f64::from_bits(self.next()),
            2 => [
                0.0,
                -0.0,
                5e-324,
                f64::MAX,
                f64::MIN_POSITIVE,
                0.1 + 0.2,
                1e16,
                1e-7,
            ][self.below(8) as usize],
            3 => (self.next() >> 11) as f64 / (1u64 << 53) as f64,
            4 => (self.below(2_000_000) as f64 - 1e6) / 8.0,
            _ => f64::from_bits(self.next() >> 12), // subnormal
        };
        if f.is_finite() { f } else { 1.5 }
    }

    fn int(&mut self) -> Value {
        match self.below(6) {
            0 => Value::from(i64::MIN),
            1 => Value::from(u64::MAX),
            2 => Value::from(i64::MAX),
            3 => Value::from(self.next() as i64),
            4 => Value::from(self.next()),
            _ => Value::from(self.below(2000) as i64 - 1000),
        }
    }

    fn text(&mut self, max: u64) -> String {
        let ranges = [
            (0x20, 0x7E),
            (0x00, 0x1F),
            (0xA0, 0x7FF),
            (0x4E00, 0x9FFF),
            (0x1F300, 0x1FAFF),
            (0x10000, 0x10FFFF),
        ];
        (0..self.below(max + 1))
            .map(|_| {
                let (lo, hi) = ranges[self.below(ranges.len() as u64) as usize];
                char::from_u32(lo + self.below(u64::from(hi - lo + 1)) as u32).unwrap_or('\u{FFFD}')
            })
            .collect()
    }

    fn value(&mut self, depth: usize) -> Value {
        let kinds = if depth < 4 { 7 } else { 5 };
        match self.below(kinds) {
            0 => Value::from(self.float()),
            1 => self.int(),
            2 => Value::Bool(self.below(2) == 0),
            3 => Value::Null,
            4 => {
                let max = if self.below(10) == 0 { 2000 } else { 16 };
                Value::String(self.text(max))
            }
            5 => Value::Array((0..self.below(6)).map(|_| self.value(depth + 1)).collect()),
            _ => Value::Object(
                (0..self.below(6))
                    .map(|_| (self.text(8), self.value(depth + 1)))
                    .collect(),
            ),
        }
    }

    /// A value nested `depth` deep around a random leaf.
    fn deep(&mut self, depth: usize) -> Value {
        let mut v = self.value(4);
        for _ in 0..depth {
            v = if self.below(2) == 0 {
                Value::Array(vec![v])
            } else {
                Value::Object(Map::from_iter([(self.text(3), v)]))
            };
        }
        v
    }
}

async fn random_values_round_trip(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let seed = testkit::kill_seed();
    eprintln!("value seed {seed} (KILL_SEED={seed} replays it)");
    let mut rng = Rng(SplitMix64(seed));
    let c = ctx();
    let store = t.store();
    let mut values: Vec<Value> = (0..300).map(|_| rng.value(0)).collect();
    for depth in [129, 500, MAX_VALUE_DEPTH - 1] {
        values.push(rng.deep(depth));
    }
    for (i, v) in values.iter().enumerate() {
        let key = format!("r-{i:04}");
        store
            .set(&c, Scope::Actor, &key, v)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let got = store
            .get(&c, Scope::Actor, &key)
            .await
            .unwrap()
            .expect("stored");
        exactly_equal(&got, v).unwrap_or_else(|e| panic!("{key} (seed {seed}): {e}"));
    }

    // Deeper than can be read back: refused before any SQL, nothing stored.
    let too_deep = rng.deep(MAX_VALUE_DEPTH + 1);
    let err = store
        .set(&c, Scope::Actor, "too-deep", &too_deep)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::InvalidValue(ValueError::TooDeep {
                depth: 1001,
                max: 1000
            })
        ),
        "{err:?}"
    );
    assert_eq!(store.get(&c, Scope::Actor, "too-deep").await.unwrap(), None);
}

/// What Python writes but a JSON value cannot hold: a typed error naming the
/// key, from `get` and from `snapshot`.
async fn unrepresentable_values_are_typed_errors(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let c = ctx();
    let store = t.store();
    for (key, text) in [
        ("nan", "{\"x\": NaN}"),
        ("inf", "[Infinity]"),
        ("big", "{\"n\": 123456789012345678901234567890}"),
        ("neg-big", "-9223372036854775809"),
    ] {
        insert_as_langbot(&t, &c, key, text).await;
        let err = store.get(&c, Scope::Conversation, key).await.unwrap_err();
        let StateError::UnreadableValue {
            state_key, source, ..
        } = &err
        else {
            panic!("{key}: {err:?}");
        };
        assert_eq!(state_key, key);
        assert!(
            matches!(
                source,
                ValueError::NonFiniteNumber { .. } | ValueError::IntegerOutOfRange { .. }
            ),
            "{key}: {source:?}"
        );
        let err = store
            .snapshot(&c, &StatePolicy::all_scopes())
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::UnreadableValue { .. }), "{err:?}");
        store.delete(&c, Scope::Conversation, key).await.unwrap();
    }
}

on_every_store_topology!(
    python_texts_read_back_exactly,
    random_values_round_trip,
    unrepresentable_values_are_typed_errors,
);
