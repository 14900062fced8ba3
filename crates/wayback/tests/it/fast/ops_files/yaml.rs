//! A strict reader of the YAML subset the example alert rules are written in, into a
//! `serde_json::Value`: block mappings with plain keys, block sequences of mappings, and
//! scalars (double- or single-quoted strings, plain words, integers, booleans), with `#`
//! comments on their own lines. No YAML crate is in the dependency tree and one is not worth
//! adding for a test; anything outside the subset (tabs, flow collections, anchors, tags,
//! block scalars, duplicate keys, odd indentation, a comment after a value) is an error naming
//! the line, so the file stays inside what this reader proves. `promtool check rules`, when
//! installed, reads the same file with Prometheus' own parser (`mod.rs`).

use serde_json::{Map, Value};

/// A meaningful line: its number (1-based), indentation and text after the indentation.
struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

pub fn parse(source: &str) -> Result<Value, String> {
    let mut lines = Vec::new();
    for (i, raw) in source.lines().enumerate() {
        let number = i + 1;
        if raw.contains('\t') {
            return Err(format!(
                "line {number}: a tab (YAML indents with spaces only)"
            ));
        }
        let text = raw.trim_start_matches(' ');
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if raw.ends_with(' ') {
            return Err(format!("line {number}: trailing spaces"));
        }
        lines.push(Line {
            number,
            indent: raw.len() - text.len(),
            text,
        });
    }
    let mut at = 0;
    let value = block(&mut lines, &mut at, 0)?;
    match lines.get(at) {
        Some(line) => Err(format!("line {}: unexpected indentation", line.number)),
        None => Ok(value),
    }
}

/// The block (mapping or sequence) whose lines start at `indent`.
fn block(lines: &mut Vec<Line<'_>>, at: &mut usize, indent: usize) -> Result<Value, String> {
    let Some(first) = lines.get(*at) else {
        return Ok(Value::Null);
    };
    if first.indent != indent {
        return Err(format!("line {}: unexpected indentation", first.number));
    }
    if first.text == "-" || first.text.starts_with("- ") {
        sequence(lines, at, indent)
    } else {
        mapping(lines, at, indent)
    }
}

fn sequence(lines: &mut Vec<Line<'_>>, at: &mut usize, indent: usize) -> Result<Value, String> {
    let mut items = Vec::new();
    while let Some(line) = lines.get_mut(*at) {
        if line.indent < indent {
            break;
        }
        if line.indent > indent || !line.text.starts_with("- ") {
            return Err(format!("line {}: expected a `- ` item", line.number));
        }
        // The item's first key sits two columns right of the dash; read it as if the dash
        // were spaces, so the item is an ordinary mapping at indent + 2.
        line.text = &line.text[2..];
        line.indent += 2;
        if line.text.starts_with(' ') {
            return Err(format!(
                "line {}: more than one space after `-`",
                line.number
            ));
        }
        items.push(mapping(lines, at, indent + 2)?);
    }
    Ok(Value::Array(items))
}

fn mapping(lines: &mut Vec<Line<'_>>, at: &mut usize, indent: usize) -> Result<Value, String> {
    let mut map = Map::new();
    while let Some(line) = lines.get(*at) {
        if line.indent < indent {
            break;
        }
        let number = line.number;
        if line.indent > indent {
            return Err(format!("line {number}: unexpected indentation"));
        }
        let (key, rest) = match line.text.split_once(':') {
            Some((key, rest)) if rest.is_empty() || rest.starts_with(' ') => (key, rest.trim()),
            _ => return Err(format!("line {number}: expected `key: value`")),
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("line {number}: key {key:?} is not a plain word"));
        }
        *at += 1;
        let value = if rest.is_empty() {
            match lines.get(*at) {
                Some(next) if next.indent > indent => block(lines, at, next.indent)?,
                _ => return Err(format!("line {number}: `{key}:` has no value")),
            }
        } else {
            scalar(rest).map_err(|e| format!("line {number}: {e}"))?
        };
        if map.insert(key.to_string(), value).is_some() {
            return Err(format!("line {number}: key `{key}` appears twice"));
        }
    }
    Ok(Value::Object(map))
}

fn scalar(text: &str) -> Result<Value, String> {
    if let Some(body) = text.strip_prefix('"') {
        return double_quoted(body).map(Value::String);
    }
    if let Some(body) = text.strip_prefix('\'') {
        let Some(inner) = body.strip_suffix('\'') else {
            return Err("a single-quoted string must end the line".into());
        };
        if inner.replace("''", "").contains('\'') {
            return Err("a lone `'` inside a single-quoted string".into());
        }
        return Ok(Value::String(inner.replace("''", "'")));
    }
    if text.starts_with(['[', '{', '&', '*', '!', '|', '>', '%', '@', '`', '-', '?']) {
        return Err(format!(
            "{text:?} is outside the YAML subset this file keeps to"
        ));
    }
    if text.contains(" #") || text.contains(": ") {
        return Err(format!("{text:?}: quote a value holding `: ` or ` #`"));
    }
    Ok(match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text.to_string()),
        },
    })
}

/// A double-quoted string's body (after the opening quote) up to the closing quote, which
/// must end the line.
fn double_quoted(body: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return match chars.as_str() {
                    "" => Ok(out),
                    rest => Err(format!("{rest:?} after the closing quote")),
                }
            }
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("escape \\{other:?} is outside the subset")),
            },
            c => out.push(c),
        }
    }
    Err("a double-quoted string is not closed on its line".into())
}

#[test]
fn the_yaml_reader_reads_the_subset_and_refuses_the_rest() {
    let good = "# comment\ngroups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up == 0\n        for: 5m\n        labels:\n          severity: critical\n        annotations:\n          summary: \"say \\\"{{ $labels.name }}\\\"\"\n          n: 3\n          q: 'it''s'\n";
    let value = parse(good).unwrap();
    let rule = &value["groups"][0]["rules"][0];
    assert_eq!(rule["expr"], "up == 0");
    assert_eq!(rule["for"], "5m");
    assert_eq!(rule["labels"]["severity"], "critical");
    assert_eq!(rule["annotations"]["summary"], "say \"{{ $labels.name }}\"");
    assert_eq!(rule["annotations"]["n"], 3);
    assert_eq!(rule["annotations"]["q"], "it's");

    let bad: &[(&str, &str)] = &[
        ("a:\n\tb: 1\n", "a tab"),
        ("a: 1\na: 2\n", "a duplicate key"),
        ("a: [1, 2]\n", "a flow sequence"),
        ("a: {b: 1}\n", "a flow mapping"),
        ("a: &x 1\n", "an anchor"),
        ("a: |\n  text\n", "a block scalar"),
        ("a: 1 # note\n", "a comment after a value"),
        ("a:\n  b: 1\n   c: 2\n", "deeper indentation without a key"),
        ("a:\n", "a key without a value"),
        ("a: \"open\n", "an unclosed string"),
        ("a: \"x\" y\n", "text after a closing quote"),
        ("a: b: c\n", "an unquoted `: `"),
        ("- a: 1\n-  b: 2\n", "two spaces after a dash"),
        ("a: 1 \n", "trailing spaces"),
        ("a b: 1\n", "a key that is not a word"),
    ];
    for (text, why) in bad {
        assert!(parse(text).is_err(), "{why} should be refused: {text:?}");
    }
}
