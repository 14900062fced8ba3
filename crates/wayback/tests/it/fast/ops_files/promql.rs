//! Just enough of PromQL to find what an expression reads: each metric selector's name, the
//! label names its matchers use, and the function it sits in (so that a counter is only read
//! through `rate`/`increase`), plus the label names of `by (…)`/`on (…)` clauses. Strings and
//! range durations are skipped; it does not judge the rest of the syntax (`promtool`, when
//! installed, does).

/// One metric selector in an expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    /// Label names its `{…}` matchers use.
    pub labels: Vec<String>,
    /// The innermost function or aggregation it is an argument of, if any.
    pub within: Option<String>,
    /// One of several metrics a `{__name__=~"a|b"}` selector picks: its matchers need only
    /// fit one of them (a regex matcher may match a label a metric does not have).
    pub of_several: bool,
}

/// What an expression reads.
#[derive(Debug, Default)]
pub struct Reads {
    pub selectors: Vec<Selector>,
    /// Label names of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right` clauses.
    pub grouping: Vec<String>,
}

/// Words that are operators or modifiers, never metric names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
/// Aggregations, which may take their `by (…)` clause before their argument.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Words whose parenthesised list holds label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

pub fn reads(expr: &str) -> Result<Reads, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Reads::default();
    // For each open parenthesis: the word before it (a function, an aggregation) or None.
    let mut stack: Vec<Option<String>> = Vec::new();
    // An aggregation whose `by (…)` came first: it names the next parenthesis.
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
        } else if c == '[' {
            i = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .map(|p| i + p + 1)
                .ok_or("an unclosed `[`")?;
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().position(|c| !c.is_whitespace());
            let next_char = next.map(|p| chars[i + p]);
            if GROUPING.contains(&word.as_str()) {
                if next_char == Some('(') {
                    let open = i + next.unwrap();
                    let close = chars[open..]
                        .iter()
                        .position(|&c| c == ')')
                        .map(|p| open + p)
                        .ok_or("an unclosed grouping list")?;
                    let list: String = chars[open + 1..close].iter().collect();
                    out.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = close + 1;
                }
            } else if next_char == Some('(') {
                i += next.unwrap() + 1;
                stack.push(Some(word));
            } else if AGGREGATIONS.contains(&word.as_str()) {
                pending = Some(word);
            } else if !KEYWORDS.contains(&word.as_str()) {
                let mut labels = Vec::new();
                if next_char == Some('{') {
                    let (found, end) = matchers(&chars, i + next.unwrap())?;
                    labels = found;
                    i = end;
                }
                let within = stack.iter().rev().flatten().next().cloned();
                out.selectors.push(Selector {
                    metric: word,
                    labels,
                    within,
                    of_several: false,
                });
            }
        } else if c == '{' {
            // A selector without a name: `{__name__=~"a|b", …}`.
            let (labels, end) = matchers(&chars, i)?;
            let names: String = chars[i..end].iter().collect();
            let within = stack.iter().rev().flatten().next().cloned();
            let alternatives = name_alternatives(&names);
            let of_several = alternatives.len() > 1;
            for metric in alternatives {
                out.selectors.push(Selector {
                    metric,
                    labels: labels
                        .iter()
                        .filter(|l| *l != "__name__")
                        .cloned()
                        .collect(),
                    within: within.clone(),
                    of_several,
                });
            }
            i = end;
        } else if c == '(' {
            stack.push(pending.take());
            i += 1;
        } else if c == ')' {
            stack.pop().ok_or("an unbalanced `)`")?;
            i += 1;
        } else {
            i += 1;
        }
    }
    if !stack.is_empty() {
        return Err("an unclosed `(`".into());
    }
    Ok(out)
}

/// The index just past the string opening at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err("an unclosed string".into())
}

/// The label names of the matcher list opening at `open` and the index just past it.
fn matchers(chars: &[char], open: usize) -> Result<(Vec<String>, usize), String> {
    let mut labels = Vec::new();
    let mut i = open + 1;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        match chars.get(i) {
            None => return Err("an unclosed `{`".into()),
            Some('}') => return Ok((labels, i + 1)),
            Some(_) => {}
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if start == i {
            return Err(format!("a matcher without a label name at {start}"));
        }
        labels.push(chars[start..i].iter().collect());
        while i < chars.len() && "=!~ ".contains(chars[i]) {
            i += 1;
        }
        if chars.get(i) != Some(&'"') {
            return Err("a matcher's value must be a double-quoted string".into());
        }
        i = skip_string(chars, i)?;
    }
}

/// The metric names a `__name__="a"` or `__name__=~"a|b"` matcher picks, from the matcher
/// list's text.
fn name_alternatives(list: &str) -> Vec<String> {
    let Some(at) = list.find("__name__") else {
        return Vec::new();
    };
    let rest = &list[at..];
    let Some(open) = rest.find('"') else {
        return Vec::new();
    };
    let body = &rest[open + 1..];
    let body = &body[..body.find('"').unwrap_or(body.len())];
    body.split('|').map(String::from).collect()
}

#[test]
fn reads_selectors_their_labels_and_their_function() {
    let r = reads(
        r#"sum by (instance, name) (rate(wayback_x_total{space=~"$s", name="a\"b"}[5m])) / on (instance) wayback_y > 0.5 and time() - z"#,
    )
    .unwrap();
    let names: Vec<_> = r.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["wayback_x_total", "wayback_y", "z"]);
    assert_eq!(r.selectors[0].labels, ["space", "name"]);
    assert_eq!(r.selectors[0].within.as_deref(), Some("rate"));
    assert_eq!(r.selectors[1].within, None);
    assert_eq!(r.grouping, ["instance", "name", "instance"]);
    let r = reads(r#"label_values({__name__=~"a|b", space=~"$space"}, instance)"#).unwrap();
    let names: Vec<_> = r.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a", "b", "instance"]);
    assert_eq!(r.selectors[0].labels, ["space"]);
    assert!(reads("rate(x[5m]").is_err(), "an unclosed parenthesis");
    assert!(reads(r#"x{a="b}"#).is_err(), "an unclosed string");
}
