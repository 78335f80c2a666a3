//! Property paths as Cloudify's ctx proxy reads them: `a.b.c`, with list indexes `a[0].b`.
//!
//! Reading a missing key is an error (as in Cloudify, so a typo fails the script instead of
//! silently reading nothing); writing creates the missing intermediate objects.

use drover_model::Map;
use serde_json::Value;

/// One dotted segment: a key and the list indexes after it (`ports[0][1]`).
struct Segment<'a> {
    key: &'a str,
    indexes: Vec<usize>,
}

fn parse(path: &str) -> Result<Vec<Segment<'_>>, String> {
    let illegal = || format!("illegal path: {path}");
    if path.is_empty() {
        return Err(illegal());
    }
    path.split('.')
        .map(|raw| {
            let (key, mut rest) = match raw.find('[') {
                Some(i) => (&raw[..i], &raw[i..]),
                None => (raw, ""),
            };
            if key.is_empty() {
                return Err(illegal());
            }
            let mut indexes = Vec::new();
            while !rest.is_empty() {
                let close = rest.find(']').ok_or_else(illegal)?;
                let index = rest
                    .get(1..close)
                    .and_then(|digits| digits.parse().ok())
                    .ok_or_else(illegal)?;
                indexes.push(index);
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(illegal());
                }
            }
            Ok(Segment { key, indexes })
        })
        .collect()
}

fn index<'v>(mut value: &'v Value, indexes: &[usize], path: &str) -> Result<&'v Value, String> {
    for &i in indexes {
        value = value
            .as_array()
            .and_then(|list| list.get(i))
            .ok_or_else(|| format!("illegal path: {path}"))?;
    }
    Ok(value)
}

fn index_mut<'v>(
    mut value: &'v mut Value,
    indexes: &[usize],
    path: &str,
) -> Result<&'v mut Value, String> {
    for &i in indexes {
        value = value
            .as_array_mut()
            .and_then(|list| list.get_mut(i))
            .ok_or_else(|| format!("illegal path: {path}"))?;
    }
    Ok(value)
}

/// The value at `path`, or an error naming the path when any part of it is missing.
pub fn get<'m>(map: &'m Map, path: &str) -> Result<&'m Value, String> {
    let segments = parse(path)?;
    let illegal = || format!("illegal path: {path}");
    let mut current = map;
    let mut found = None;
    for (n, segment) in segments.iter().enumerate() {
        let value = current.get(segment.key).ok_or_else(illegal)?;
        let value = index(value, &segment.indexes, path)?;
        if n + 1 < segments.len() {
            current = value.as_object().ok_or_else(illegal)?;
        } else {
            found = Some(value);
        }
    }
    found.ok_or_else(illegal)
}

/// Sets the value at `path`, creating missing objects on the way.
pub fn set(map: &mut Map, path: &str, new_value: Value) -> Result<(), String> {
    let segments = parse(path)?;
    let illegal = || format!("illegal path: {path}");
    let (last, parents) = segments.split_last().ok_or_else(illegal)?;
    let mut current = map;
    for segment in parents {
        let slot = if segment.indexes.is_empty() {
            current
                .entry(segment.key)
                .or_insert_with(|| Value::Object(Map::new()))
        } else {
            let list = current.get_mut(segment.key).ok_or_else(illegal)?;
            index_mut(list, &segment.indexes, path)?
        };
        current = slot.as_object_mut().ok_or_else(illegal)?;
    }
    if last.indexes.is_empty() {
        current.insert(last.key.to_string(), new_value);
    } else {
        let list = current.get_mut(last.key).ok_or_else(illegal)?;
        *index_mut(list, &last.indexes, path)? = new_value;
    }
    Ok(())
}

/// Looks a dotted path up in any JSON value (for template rendering), `None` when missing.
pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let segments = parse(path).ok()?;
    let mut current = root;
    for segment in &segments {
        current = current.as_object()?.get(segment.key)?;
        current = index(current, &segment.indexes, path).ok()?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn reads_nested_keys_and_indexes() {
        let m = map(json!({"a": {"b": [{"c": 1}, {"c": [5, 6]}]}}));
        assert_eq!(get(&m, "a.b[0].c").unwrap(), &json!(1));
        assert_eq!(get(&m, "a.b[1].c[1]").unwrap(), &json!(6));
        assert_eq!(
            get(&m, "a").unwrap(),
            &json!({"b": [{"c": 1}, {"c": [5, 6]}]})
        );
    }

    #[test]
    fn missing_or_malformed_paths_are_errors() {
        let m = map(json!({"a": {"b": [1]}}));
        for path in [
            "x", "a.x", "a.b[3]", "a.b[x]", "a.b[0", "", "a..b", "a.b[0]c",
        ] {
            assert!(get(&m, path).is_err(), "{path}");
        }
    }

    #[test]
    fn set_creates_intermediate_objects() {
        let mut m = Map::new();
        set(&mut m, "a.b.c", json!("x")).unwrap();
        set(&mut m, "top", json!(3)).unwrap();
        assert_eq!(Value::Object(m), json!({"a": {"b": {"c": "x"}}, "top": 3}));
    }

    #[test]
    fn set_into_lists_needs_the_element() {
        let mut m = map(json!({"l": [{"k": 1}, 2]}));
        set(&mut m, "l[0].k", json!(9)).unwrap();
        set(&mut m, "l[1]", json!(8)).unwrap();
        assert!(set(&mut m, "l[5]", json!(0)).is_err());
        assert!(set(&mut m, "l[1].k", json!(0)).is_err());
        assert_eq!(Value::Object(m), json!({"l": [{"k": 9}, 8]}));
    }

    #[test]
    fn lookup_in_values() {
        let v = json!({"ctx": {"node": {"properties": {"port": 80}}}});
        assert_eq!(lookup(&v, "ctx.node.properties.port"), Some(&json!(80)));
        assert_eq!(lookup(&v, "ctx.nope"), None);
    }
}
