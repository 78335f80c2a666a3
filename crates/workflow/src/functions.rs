//! Runtime intrinsic functions, evaluated when a task is sent and when outputs are read:
//! `get_attribute` (runtime properties first, then node properties; `SELF`, `SOURCE`, `TARGET`
//! or a node name, resolved as Cloudify does when the node has several instances: the one SELF
//! has a relationship to, else the one in SELF's scaling group instance), `get_secret` (the
//! tenant's secret from the state store, read when the task is made, so a secret changed
//! between two tasks is seen by the second) and `concat` over their results. Plan-time functions
//! were evaluated by the parser.

use drover_model::Map;
use drover_store::StateStore;
use serde_json::Value;

use crate::world::World;

/// What runtime functions read: the deployment as it runs, and where its tenant's secrets are.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub world: &'a World,
    pub store: &'a dyn StateStore,
    pub tenant: &'a str,
}

/// Who `SELF`, `SOURCE` and `TARGET` are for the function being evaluated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scope {
    pub this: Option<u32>,
    pub source: Option<u32>,
    pub target: Option<u32>,
}

/// Evaluates the runtime functions in a value.
pub(crate) fn evaluate(value: &Value, env: Env<'_>, scope: Scope) -> Result<Value, String> {
    match value {
        Value::Object(map) => {
            let mut entries = map.iter();
            match (entries.next(), entries.next()) {
                (Some((name, args)), None) if name == "get_attribute" => {
                    get_attribute(args, env.world, scope)
                }
                (Some((name, args)), None) if name == "get_secret" => {
                    get_secret(&evaluate(args, env, scope)?, env)
                }
                (Some((name, args)), None) if name == "concat" => concat(args, env, scope),
                _ => evaluate_map(map, env, scope).map(Value::Object),
            }
        }
        Value::Array(items) => items
            .iter()
            .map(|v| evaluate(v, env, scope))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

pub(crate) fn evaluate_map(map: &Map, env: Env<'_>, scope: Scope) -> Result<Map, String> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), evaluate(v, env, scope)?)))
        .collect()
}

/// Whether a value holds a runtime function (so must be evaluated before a task carries it).
pub(crate) fn has_function(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            (map.len() == 1
                && map
                    .keys()
                    .all(|k| matches!(k.as_str(), "get_attribute" | "get_secret" | "concat")))
                || map.values().any(has_function)
        }
        Value::Array(items) => items.iter().any(has_function),
        _ => false,
    }
}

fn concat(args: &Value, env: Env<'_>, scope: Scope) -> Result<Value, String> {
    let Value::Array(parts) = args else {
        return Err("concat takes a list".into());
    };
    let mut out = String::new();
    for part in parts {
        match evaluate(part, env, scope)? {
            Value::String(s) => out.push_str(&s),
            Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(Value::String(out))
}

fn get_attribute(args: &Value, w: &World, scope: Scope) -> Result<Value, String> {
    let Some([entity, attribute, path @ ..]) = args.as_array().map(Vec::as_slice) else {
        return Err(format!(
            "get_attribute takes [entity, attribute, …], got {args}"
        ));
    };
    let (Some(entity), Some(attribute)) = (entity.as_str(), attribute.as_str()) else {
        return Err(format!(
            "get_attribute: entity and attribute must be strings: {args}"
        ));
    };
    let instance = resolve(entity, w, scope)?;
    let ni = &w.instances[instance as usize];
    let mut value = match ni.runtime_properties.get(attribute) {
        Some(v) => v.clone(),
        None => match w.node(instance).properties.get(attribute) {
            Some(v) => v.clone(),
            None if attribute == "node_instance_id" => Value::String(ni.id.clone()),
            None if attribute == "node_id" => Value::String(ni.node_id.clone()),
            None => Value::Null,
        },
    };
    for step in path {
        value = match (value, step) {
            (Value::Object(mut m), Value::String(k)) => m.remove(k).unwrap_or(Value::Null),
            (Value::Array(mut a), Value::Number(n)) => match n.as_u64() {
                Some(i) if (i as usize) < a.len() => a.swap_remove(i as usize),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
    }
    Ok(value)
}

/// `{get_secret: name}` is the secret's value; `{get_secret: [name, key, …]}` reads into the
/// value as JSON, as Cloudify does (a key of a mapping, an index of a list). Errors name the
/// secret and the path, never the value.
fn get_secret(args: &Value, env: Env<'_>) -> Result<Value, String> {
    let parts = match args {
        Value::Array(items) => items.as_slice(),
        name => std::slice::from_ref(name),
    };
    let Some((Value::String(name), path)) = parts.split_first() else {
        return Err(format!(
            "get_secret takes a name or [name, key, …], got {args}"
        ));
    };
    let secret = env
        .store
        .secret(env.tenant, name)
        .map_err(|e| format!("get_secret: reading secret {name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "get_secret: secret {name} not found in tenant {}",
                env.tenant
            )
        })?;
    if path.is_empty() {
        return Ok(Value::String(secret.value));
    }
    let mut value: Value = serde_json::from_str(&secret.value).map_err(|_| {
        format!(
            "get_secret: secret {name} is not JSON, so it has no {} to read",
            Value::from(path)
        )
    })?;
    for (depth, step) in path.iter().enumerate() {
        let missing = || {
            format!(
                "get_secret: secret {name} has nothing at {}",
                Value::from(&path[..=depth])
            )
        };
        value = match (value, step) {
            (Value::Object(mut m), Value::String(k)) => m.remove(k).ok_or_else(missing)?,
            (Value::Array(mut a), step) => {
                let index = match step {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                match index {
                    Some(i) if (i as usize) < a.len() => a.swap_remove(i as usize),
                    _ => return Err(missing()),
                }
            }
            _ => return Err(missing()),
        };
    }
    Ok(value)
}

/// The instance an entity name stands for.
fn resolve(entity: &str, w: &World, scope: Scope) -> Result<u32, String> {
    let pick = |who: Option<u32>, name: &str| {
        who.ok_or_else(|| {
            format!("get_attribute: {name} is only known in a relationship operation")
        })
    };
    match entity {
        "SELF" => scope
            .this
            .ok_or_else(|| "get_attribute: SELF is not known in outputs".to_owned()),
        "SOURCE" => pick(scope.source, "SOURCE"),
        "TARGET" => pick(scope.target, "TARGET"),
        node => {
            let candidates = w.instances_of(node);
            if candidates.is_empty() {
                return Err(format!("get_attribute: node {node} has no instances"));
            }
            if candidates.len() == 1 {
                return Ok(candidates[0]);
            }
            let ambiguous = || {
                format!(
                    "get_attribute: more than one node instance found for node \"{node}\"; \
                     cannot resolve a node instance unambiguously"
                )
            };
            let Some(this) = scope.this else {
                return Err(ambiguous());
            };
            // As Cloudify: the one instance SELF has relationships to, else the one in SELF's
            // scaling group instance.
            let by_relationship: Vec<u32> = candidates
                .iter()
                .copied()
                .filter(|&c| w.rels[this as usize].iter().any(|r| r.target == c))
                .collect();
            if let [one] = by_relationship.as_slice() {
                return Ok(*one);
            }
            let groups = &w.instances[this as usize].scaling_groups;
            let by_group: Vec<u32> = candidates
                .into_iter()
                .filter(|&c| {
                    w.instances[c as usize]
                        .scaling_groups
                        .iter()
                        .any(|g| groups.iter().any(|h| h.id == g.id))
                })
                .collect();
            match by_group.as_slice() {
                [one] => Ok(*one),
                _ => Err(ambiguous()),
            }
        }
    }
}

/// The deployment's outputs, with runtime functions evaluated; an output that cannot be
/// evaluated reads as its error message, so one bad output does not hide the others.
pub(crate) fn outputs(env: Env<'_>) -> Map {
    let mut out = Map::new();
    for (name, spec) in &env.world.plan.outputs {
        let value = spec.get("value").unwrap_or(&Value::Null);
        let v = evaluate(value, env, Scope::default())
            .unwrap_or_else(|e| Value::String(format!("error: {e}")));
        out.insert(name.clone(), v);
    }
    out
}
