//! Query strings: Cloudify's list parameters (`_offset`, `_size`, `_sort`, `_include`, equality
//! filters) and the list response `{"items", "metadata": {"pagination"}}`.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

/// The real server's default and largest page.
pub const MAX_PAGE: usize = 1000;

/// A decoded query string, keys in order, repeated keys kept.
#[derive(Debug, Clone, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: &str) -> ApiResult<Query> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter; the client sends Python's `True`/`False`.
    pub fn flag(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| {
                ApiError::bad_request(format!("{key}: expected a boolean, got {v:?}"))
            }),
        }
    }

    pub fn usize(&self, key: &str, default: usize) -> ApiResult<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request(format!("{key}: expected a non-negative integer, got {v:?}"))
            }),
        }
    }
}

/// `true`/`True`/`1` and their opposites.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Percent-decoding with `+` as space, as forms encode.
fn decode(s: &str) -> ApiResult<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("malformed percent-encoding in the query string")
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the query string is not UTF-8"))
}

/// What a list request asks for.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub offset: usize,
    pub size: usize,
    /// Fields, each descending when `true`.
    pub sort: Vec<(String, bool)>,
    pub include: Option<Vec<String>>,
    /// `field=value` filters; repeated fields match any of their values.
    pub filters: Vec<(String, String)>,
}

impl ListParams {
    /// Reads the paging parameters and treats every other key not starting with `_` and not in
    /// `ignored` as an equality filter.
    pub fn from_query(query: &Query, ignored: &[&str]) -> ApiResult<ListParams> {
        let size = query.usize("_size", MAX_PAGE)?.min(MAX_PAGE);
        let offset = query.usize("_offset", 0)?;
        let sort = query
            .all("_sort")
            .flat_map(|s| s.split(','))
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('-') {
                Some(f) => (f.to_owned(), true),
                None => (s.trim_start_matches('+').to_owned(), false),
            })
            .collect();
        let include = query.get("_include").map(|s| {
            s.split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect()
        });
        let filters = query
            .0
            .iter()
            .filter(|(k, _)| !k.starts_with('_') && !ignored.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok(ListParams {
            offset,
            size,
            sort,
            include,
            filters,
        })
    }

    /// Filters, sorts, pages and projects `items` (objects with every field of the resource),
    /// returning Cloudify's list body.
    pub fn apply(&self, items: Vec<Value>) -> ApiResult<Value> {
        let fields: Vec<String> = items
            .first()
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let known = |f: &str| fields.is_empty() || fields.iter().any(|k| k == f);
        for (field, _) in &self.sort {
            if !known(field) {
                return Err(ApiError::bad_request(format!(
                    "cannot sort by unknown field {field:?}"
                )));
            }
        }
        if let Some(include) = &self.include
            && let Some(bad) = include.iter().find(|f| !known(f))
        {
            return Err(ApiError::invalid(
                "no_such_include_field_error",
                format!("{bad} is not a field of this resource"),
            ));
        }
        let mut items: Vec<Value> = items
            .into_iter()
            .filter(|item| self.matches(item))
            .collect();
        if !self.sort.is_empty() {
            items.sort_by(|a, b| {
                self.sort
                    .iter()
                    .map(|(f, desc)| {
                        let o = compare(&a[f.as_str()], &b[f.as_str()]);
                        if *desc { o.reverse() } else { o }
                    })
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            });
        }
        let total = items.len();
        let page: Vec<Value> = items
            .into_iter()
            .skip(self.offset)
            .take(self.size)
            .map(|item| self.project(item))
            .collect();
        Ok(list_body(page, total, self.size, self.offset))
    }

    fn matches(&self, item: &Value) -> bool {
        let mut fields: Vec<&str> = self.filters.iter().map(|(k, _)| k.as_str()).collect();
        fields.dedup();
        fields.iter().all(|field| {
            let have = &item[*field];
            self.filters
                .iter()
                .filter(|(k, _)| k == field)
                .any(|(_, want)| {
                    // Booleans come Python-cased (`True`).
                    scalar(have).is_some_and(|h| {
                        h == *want || (have.is_boolean() && h.eq_ignore_ascii_case(want))
                    })
                })
        })
    }

    /// Only the `_include` fields, when given.
    pub fn project(&self, item: Value) -> Value {
        match (&self.include, item) {
            (Some(include), Value::Object(mut object)) => {
                let kept: Map<String, Value> = include
                    .iter()
                    .filter_map(|f| object.remove(f).map(|v| (f.clone(), v)))
                    .collect();
                Value::Object(kept)
            }
            (_, item) => item,
        }
    }
}

/// A value as a filter compares it: strings as they are, numbers and booleans as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Cloudify's list body.
pub fn list_body(items: Vec<Value>, total: usize, size: usize, offset: usize) -> Value {
    json!({
        "items": items,
        "metadata": {"pagination": {"total": total, "size": size, "offset": offset}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_sorts_filters_and_projects() {
        let q = Query::parse("_size=2&_offset=1&_sort=-n&kind=a&kind=b&_include=n").unwrap();
        let p = ListParams::from_query(&q, &[]).unwrap();
        let items = (0..5)
            .map(|n| json!({"n": n, "kind": if n == 3 { "c" } else if n % 2 == 0 { "a" } else { "b" }}))
            .collect();
        let body = p.apply(items).unwrap();
        assert_eq!(body["items"], json!([{"n": 2}, {"n": 1}]));
        assert_eq!(
            body["metadata"]["pagination"],
            json!({"total": 4, "size": 2, "offset": 1})
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_numbers() {
        let q = Query::parse("_include=nope").unwrap();
        let err = ListParams::from_query(&q, &[])
            .unwrap()
            .apply(vec![json!({"id": "x"})])
            .unwrap_err();
        assert_eq!(err.code, "no_such_include_field_error");
        assert!(ListParams::from_query(&Query::parse("_size=-1").unwrap(), &[]).is_err());
        assert!(Query::parse("a=%zz").is_err());
    }

    #[test]
    fn booleans_match_python_case() {
        let q = Query::parse("hidden=True").unwrap();
        let p = ListParams::from_query(&q, &[]).unwrap();
        let body = p
            .apply(vec![json!({"hidden": true}), json!({"hidden": false})])
            .unwrap();
        assert_eq!(body["metadata"]["pagination"]["total"], 1);
    }
}
