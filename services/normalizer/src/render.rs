//! Block Kit to plain text: what an agent reads of a message whose text Slack sent
//! only as `blocks` (rich text, sections, headers, context). Pure and total: any JSON
//! renders to some text or to `None`, never a panic.

use serde_json::{Map, Value};

fn str_field<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Renders Block Kit `blocks` to plain text: rich text (code kept as code, links,
/// mentions, emoji by name, lists, quotes) and section text. `None` when nothing
/// renders.
pub fn render_blocks(blocks: &Value) -> Option<String> {
    let mut out = String::new();
    for block in blocks.as_array()? {
        let Some(block) = block.as_object() else {
            continue;
        };
        let start = out.len();
        match str_field(block, "type") {
            Some("rich_text") => {
                for element in block
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    render_rich_element(element, &mut out);
                }
            }
            Some("section") | Some("header") | Some("context") => {
                if let Some(Value::Object(text)) = block.get("text") {
                    out.push_str(str_field(text, "text").unwrap_or_default());
                }
                for element in block
                    .get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = element.as_object().and_then(|e| str_field(e, "text")) {
                        out.push_str(t);
                    }
                }
            }
            _ => {}
        }
        if out.len() > start && !out.ends_with('\n') {
            out.push('\n');
        }
    }
    let trimmed = out.trim_end();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn render_rich_element(element: &Value, out: &mut String) {
    let Some(element) = element.as_object() else {
        return;
    };
    let children = element.get("elements").and_then(Value::as_array);
    match str_field(element, "type") {
        Some("rich_text_section") => {
            for child in children.into_iter().flatten() {
                render_inline(child, out);
            }
            out.push('\n');
        }
        Some("rich_text_preformatted") => {
            out.push_str("```\n");
            for child in children.into_iter().flatten() {
                render_inline_plain(child, out);
            }
            out.push_str("\n```\n");
        }
        Some("rich_text_quote") => {
            let mut quoted = String::new();
            for child in children.into_iter().flatten() {
                render_inline(child, &mut quoted);
            }
            for line in quoted.lines() {
                out.push_str("> ");
                out.push_str(line);
                out.push('\n');
            }
        }
        Some("rich_text_list") => {
            let ordered = str_field(element, "style") == Some("ordered");
            for (i, item) in children.into_iter().flatten().enumerate() {
                let mut text = String::new();
                render_rich_element(item, &mut text);
                out.push_str(&if ordered {
                    format!("{}. ", i + 1)
                } else {
                    "- ".to_owned()
                });
                out.push_str(text.trim_end());
                out.push('\n');
            }
        }
        _ => {}
    }
}

fn render_inline(inline: &Value, out: &mut String) {
    let Some(inline) = inline.as_object() else {
        return;
    };
    let code = inline
        .get("style")
        .and_then(Value::as_object)
        .and_then(|s| s.get("code"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if code {
        out.push('`');
        render_inline_object(inline, out);
        out.push('`');
    } else {
        render_inline_object(inline, out);
    }
}

fn render_inline_plain(inline: &Value, out: &mut String) {
    if let Some(inline) = inline.as_object() {
        render_inline_object(inline, out);
    }
}

fn render_inline_object(inline: &Map<String, Value>, out: &mut String) {
    match str_field(inline, "type") {
        Some("text") => out.push_str(str_field(inline, "text").unwrap_or_default()),
        Some("link") => {
            let url = str_field(inline, "url").unwrap_or_default();
            match str_field(inline, "text") {
                Some(label) if label != url => {
                    out.push_str(label);
                    out.push_str(" (");
                    out.push_str(url);
                    out.push(')');
                }
                _ => out.push_str(url),
            }
        }
        Some("user") => {
            out.push('@');
            out.push_str(str_field(inline, "user_id").unwrap_or("unknown"));
        }
        Some("usergroup") => {
            out.push('@');
            out.push_str(str_field(inline, "usergroup_id").unwrap_or("unknown"));
        }
        Some("channel") => {
            out.push('#');
            out.push_str(str_field(inline, "channel_id").unwrap_or("unknown"));
        }
        Some("broadcast") => {
            out.push('@');
            out.push_str(str_field(inline, "range").unwrap_or("here"));
        }
        Some("emoji") => {
            out.push(':');
            out.push_str(str_field(inline, "name").unwrap_or_default());
            out.push(':');
        }
        _ => {}
    }
}
