//! Deployment inputs: the values given for a blueprint's inputs, checked against the input
//! definitions (unknown inputs, required inputs without a value, types, constraints).

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::error::Error;
use crate::functions;
use crate::types::{self, Derived};
use crate::yaml::Mark;
use drover_model::Map;

/// The value of every defined input: the given one, else the default, else `None` (allowed only
/// for inputs with `required: false`). `mark` locates errors about inputs given but not defined.
pub fn values(
    definitions: &IndexMap<String, (Map, Mark)>,
    given: &Map,
    data_types: &HashMap<String, Derived>,
    mark: &Mark,
) -> Result<HashMap<String, Option<Json>>, Error> {
    let unknown: Vec<&str> = given
        .keys()
        .filter(|k| !definitions.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(mark.error(
            "inputs",
            format!("unknown inputs given: {}", unknown.join(", ")),
        ));
    }
    let mut missing: Vec<(&str, &Mark)> = Vec::new();
    let mut out = HashMap::with_capacity(definitions.len());
    for (name, (definition, mark)) in definitions {
        let path = format!("inputs.{name}");
        let value = given
            .get(name)
            .or_else(|| definition.get("default"))
            .cloned();
        let Some(value) = value else {
            if definition.get("required") != Some(&Json::Bool(false)) {
                missing.push((name.as_str(), mark));
            }
            out.insert(name.clone(), None);
            continue;
        };
        let what = format!("input '{name}'");
        let type_name = definition.get("type").and_then(Json::as_str);
        let check = types::PropertyCheck {
            data_types,
            what: &what,
            mark,
            require: true,
        };
        let value = types::typed_value(value, type_name, &check, &path)?;
        if !functions::is_function(&value)
            && let Some(Json::Array(constraints)) = definition.get("constraints")
        {
            for constraint in constraints {
                check_constraint(&value, constraint)
                    .map_err(|m| mark.error(&path, format!("{what}: {m}")))?;
            }
        }
        out.insert(name.clone(), Some(value));
    }
    if let Some((first, mark)) = missing.first() {
        let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
        return Err(mark.error(
            format!("inputs.{first}"),
            format!(
                "required inputs have no value and no default: {}",
                names.join(", ")
            ),
        ));
    }
    Ok(out)
}

/// Checks one constraint (`{greater_than: 1}` …) of an input value.
fn check_constraint(value: &Json, constraint: &Json) -> Result<(), String> {
    let operator = constraint
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| *k != "error_message"));
    let Some((name, arg)) = operator else {
        return Err(format!(
            "a constraint is a single-entry mapping, got {constraint}"
        ));
    };
    let number = |v: &Json| v.as_f64();
    let length = || match value {
        Json::String(s) => Some(s.chars().count() as f64),
        Json::Array(a) => Some(a.len() as f64),
        Json::Object(o) => Some(o.len() as f64),
        _ => None,
    };
    let compare = |ok: fn(f64, f64) -> bool| -> Result<bool, String> {
        match (number(value), number(arg)) {
            (Some(v), Some(a)) => Ok(ok(v, a)),
            _ => Err(format!(
                "constraint {name} compares numbers; got {value} and {arg}"
            )),
        }
    };
    let ok = match name.as_str() {
        "equal" => value == arg,
        "greater_than" => compare(|v, a| v > a)?,
        "greater_or_equal" => compare(|v, a| v >= a)?,
        "less_than" => compare(|v, a| v < a)?,
        "less_or_equal" => compare(|v, a| v <= a)?,
        "in_range" => match (number(value), arg.as_array().map(Vec::as_slice)) {
            (Some(v), Some([lo, hi])) => {
                number(lo).is_some_and(|l| v >= l) && number(hi).is_some_and(|h| v <= h)
            }
            _ => {
                return Err(format!(
                    "constraint in_range takes [min, max] and a number; got {arg} and {value}"
                ));
            }
        },
        "valid_values" => arg.as_array().is_some_and(|a| a.contains(value)),
        "length" => length().zip(number(arg)).is_some_and(|(l, a)| l == a),
        "min_length" => length().zip(number(arg)).is_some_and(|(l, a)| l >= a),
        "max_length" => length().zip(number(arg)).is_some_and(|(l, a)| l <= a),
        "pattern" => match (value.as_str(), arg.as_str()) {
            (Some(v), Some(p)) => simple_pattern(p, v),
            _ => {
                return Err(format!(
                    "constraint pattern takes a string pattern and value; got {arg} and {value}"
                ));
            }
        },
        _ => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        match constraint.get("error_message").and_then(Json::as_str) {
            Some(message) => Err(message.to_string()),
            None => Err(format!("value {value} violates constraint {name}: {arg}")),
        }
    }
}

/// A small regular-expression matcher (anchored at the start, as Python's `re.match`):
/// literals, `.`, `*`, `+`, `?`, `^`, `$`, character classes `[a-z]`, escapes `\d \w \s \.`.
/// Patterns beyond it are accepted without checking rather than rejected wrongly.
fn simple_pattern(pattern: &str, value: &str) -> bool {
    let Some(atoms) = compile(pattern) else {
        return true;
    };
    if atoms.len() > MAX_PATTERN_PIECES {
        return true;
    }
    let chars: Vec<char> = value.chars().collect();
    let mut steps = 0;
    match_here(&atoms, &chars, &mut steps).unwrap_or(true)
}

/// Longer patterns are not checked (the matcher recurses once per piece).
const MAX_PATTERN_PIECES: usize = 256;
/// Matching steps allowed before a pattern is given up on (and not checked), so that a
/// pathological pattern cannot hang planning.
const MAX_PATTERN_STEPS: usize = 1_000_000;

#[derive(Debug, Clone)]
enum Atom {
    Char(char),
    Any,
    Class(Vec<(char, char)>, bool),
    End,
}

#[derive(Debug, Clone)]
struct Piece {
    atom: Atom,
    min: usize,
    max: usize,
}

fn compile(pattern: &str) -> Option<Vec<Piece>> {
    let mut chars = pattern
        .strip_prefix('^')
        .unwrap_or(pattern)
        .chars()
        .peekable();
    let mut out: Vec<Piece> = Vec::new();
    while let Some(c) = chars.next() {
        let atom = match c {
            '.' => Atom::Any,
            '$' if chars.peek().is_none() => Atom::End,
            '\\' => match chars.next()? {
                'd' => Atom::Class(vec![('0', '9')], false),
                'w' => Atom::Class(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], false),
                's' => Atom::Class(
                    vec![(' ', ' '), ('\t', '\t'), ('\n', '\n'), ('\r', '\r')],
                    false,
                ),
                other if !other.is_alphanumeric() => Atom::Char(other),
                _ => return None,
            },
            '[' => {
                let negated = chars.peek() == Some(&'^');
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                loop {
                    let c = chars.next()?;
                    if c == ']' {
                        break;
                    }
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        match chars.next()? {
                            ']' => {
                                ranges.push((c, c));
                                ranges.push(('-', '-'));
                                break;
                            }
                            hi => ranges.push((c, hi)),
                        }
                    } else {
                        ranges.push((c, c));
                    }
                }
                Atom::Class(ranges, negated)
            }
            '*' | '+' | '?' => {
                let last = out.last_mut()?;
                (last.min, last.max) = match c {
                    '*' => (0, usize::MAX),
                    '+' => (1, usize::MAX),
                    _ => (0, 1),
                };
                continue;
            }
            '(' | ')' | '|' | '{' | '}' => return None,
            other => Atom::Char(other),
        };
        out.push(Piece {
            atom,
            min: 1,
            max: 1,
        });
    }
    Some(out)
}

fn matches_atom(atom: &Atom, c: char) -> bool {
    match atom {
        Atom::Char(x) => *x == c,
        Atom::Any => c != '\n',
        Atom::Class(ranges, negated) => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
        Atom::End => false,
    }
}

/// Backtracking match of pieces against the start of `text`; `None` when it takes more than
/// `MAX_PATTERN_STEPS`.
fn match_here(pieces: &[Piece], text: &[char], steps: &mut usize) -> Option<bool> {
    let Some((piece, rest)) = pieces.split_first() else {
        return Some(true);
    };
    if let Atom::End = piece.atom {
        return Some(text.is_empty());
    }
    let mut count = 0;
    while count < piece.max
        && count < text.len()
        && text
            .get(count)
            .is_some_and(|c| matches_atom(&piece.atom, *c))
    {
        count += 1;
    }
    loop {
        *steps += 1;
        if *steps > MAX_PATTERN_STEPS {
            return None;
        }
        if count >= piece.min && match_here(rest, text.get(count..).unwrap_or_default(), steps)? {
            return Some(true);
        }
        if count == 0 || count <= piece.min {
            return Some(false);
        }
        count -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constraints() {
        assert!(check_constraint(&json!(5), &json!({"greater_than": 4})).is_ok());
        assert!(check_constraint(&json!(5), &json!({"in_range": [6, 9]})).is_err());
        assert!(check_constraint(&json!("b"), &json!({"valid_values": ["a", "b"]})).is_ok());
        assert!(check_constraint(&json!("abc"), &json!({"max_length": 2})).is_err());
        assert!(check_constraint(&json!("ab12"), &json!({"pattern": "[a-z]+\\d+$"})).is_ok());
        assert!(check_constraint(&json!("ab12x"), &json!({"pattern": "[a-z]+\\d+$"})).is_err());
    }
}
