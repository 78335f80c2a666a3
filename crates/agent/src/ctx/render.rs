//! Template rendering for `ctx download-resource-and-render`.
//!
//! Cloudify renders with Jinja2; scripts use it almost only to substitute values, so this
//! supports `{{ dotted.path }}` expressions (with `[n]` indexes) and refuses templates with
//! control structures (`{% … %}`) instead of rendering them wrongly. As in Jinja2, an undefined
//! value renders as the empty string.

use serde_json::Value;

use super::path;

/// Renders `template` against `context` (an object: `ctx` and the template variables).
pub fn render(template: &str, context: &Value) -> Result<String, String> {
    if template.contains("{%") {
        return Err(
            "templates with {% … %} blocks are not supported; only {{ value }} \
                    substitutions are"
                .to_string(),
        );
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed {{ in template".to_string())?;
        let expression = after[..end].trim();
        match path::lookup(context, expression) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn substitutes_values() {
        let ctx =
            json!({"ctx": {"node": {"properties": {"port": 8080, "name": "web"}}}, "x": [1, 2]});
        let out = render(
            "listen {{ctx.node.properties.port}} {{ ctx.node.properties.name }} {{x[1]}} {{ nope }}.",
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "listen 8080 web 2 .");
    }

    #[test]
    fn refuses_blocks_and_unclosed_expressions() {
        assert!(render("{% if x %}y{% endif %}", &json!({})).is_err());
        assert!(render("a {{ b", &json!({})).is_err());
    }
}
