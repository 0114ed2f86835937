//! The RSQL/FIQL subset Central's `query` parameter and the Traceability summary `query` accept
//! (reference §2.5): parsing into a filter tree and matching it against a JSON document.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Compare {
        field: String,
        op: Op,
        values: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `==`: case-insensitive, `*` (any run) and `_` (one character) wildcards.
    Eq,
    /// `===` / `=eq=`: case-sensitive, same wildcards.
    EqCase,
    Ne,
    NeCase,
    In,
    Out,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Operators by their spelling; longest first so `===` is not read as `==` then `=`.
const OPERATORS: &[(&str, Op)] = &[
    ("=out=", Op::Out),
    ("=in=", Op::In),
    ("=eq=", Op::EqCase),
    ("=ne=", Op::NeCase),
    ("=lt=", Op::Lt),
    ("=le=", Op::Le),
    ("=gt=", Op::Gt),
    ("=ge=", Op::Ge),
    ("===", Op::EqCase),
    ("!==", Op::NeCase),
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("<", Op::Lt),
    (">", Op::Gt),
];

/// Parses a whole query; anything left over or malformed is an error naming the position.
pub(crate) fn parse(input: &str) -> Result<Filter, String> {
    let mut parser = Parser {
        chars: input.chars().collect(),
        pos: 0,
    };
    let filter = parser.or()?;
    parser.skip_ws();
    if parser.pos < parser.chars.len() {
        return Err(format!(
            "unexpected '{}' at position {} of query",
            parser.chars[parser.pos], parser.pos
        ));
    }
    Ok(filter)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn starts_with(&self, text: &str) -> bool {
        text.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    /// `and` / `or` as words: preceded by whitespace (already skipped) and followed by
    /// whitespace or `(`.
    fn keyword(&mut self, word: &str) -> bool {
        if self.pos == 0 || !self.chars[self.pos - 1].is_whitespace() {
            return false;
        }
        let lower: String = self
            .chars
            .iter()
            .skip(self.pos)
            .take(word.len())
            .collect::<String>()
            .to_ascii_lowercase();
        let after = self.chars.get(self.pos + word.len());
        if lower == word && after.is_some_and(|c| c.is_whitespace() || *c == '(') {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.and()?];
        loop {
            self.skip_ws();
            if self.peek() == Some(',') {
                self.pos += 1;
            } else if !self.keyword("or") {
                break;
            }
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Filter::And(Vec::new()))
        } else {
            Filter::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.constraint()?];
        loop {
            self.skip_ws();
            if self.peek() == Some(';') {
                self.pos += 1;
            } else if !self.keyword("and") {
                break;
            }
            parts.push(self.constraint()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Filter::And(Vec::new()))
        } else {
            Filter::And(parts)
        })
    }

    fn constraint(&mut self) -> Result<Filter, String> {
        self.skip_ws();
        if self.peek() == Some('(') {
            self.pos += 1;
            let inner = self.or()?;
            self.skip_ws();
            if self.peek() != Some(')') {
                return Err(format!("missing ')' at position {} of query", self.pos));
            }
            self.pos += 1;
            return Ok(inner);
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| {
            !matches!(c, '=' | '!' | '<' | '>' | '(' | ')' | ';' | ',') && !c.is_whitespace()
        }) {
            self.pos += 1;
        }
        let field: String = self.chars[start..self.pos].iter().collect();
        if field.is_empty() {
            return Err(format!(
                "expected a field name at position {start} of query"
            ));
        }
        self.skip_ws();
        let op = OPERATORS
            .iter()
            .find(|(spelling, _)| self.starts_with(spelling))
            .map(|(spelling, op)| (spelling.chars().count(), *op));
        let Some((len, op)) = op else {
            return Err(format!(
                "expected a comparison operator after '{field}' at position {} of query",
                self.pos
            ));
        };
        self.pos += len;
        self.skip_ws();
        let values = if matches!(op, Op::In | Op::Out) {
            if self.peek() != Some('(') {
                return Err(format!("expected '(' after =in=/=out= for '{field}'"));
            }
            self.pos += 1;
            let mut values = vec![self.value()?];
            loop {
                self.skip_ws();
                match self.peek() {
                    Some(',') => {
                        self.pos += 1;
                        values.push(self.value()?);
                    }
                    Some(')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(format!("unterminated value list for '{field}'")),
                }
            }
            values
        } else {
            vec![self.value()?]
        };
        Ok(Filter::Compare { field, op, values })
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                self.pos += 1;
                let mut text = String::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated quoted value in query".to_owned()),
                        Some('\\') => {
                            self.pos += 1;
                            if let Some(c) = self.peek() {
                                text.push(c);
                                self.pos += 1;
                            }
                        }
                        Some(c) if c == quote => {
                            self.pos += 1;
                            return Ok(text);
                        }
                        Some(c) => {
                            text.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| {
                    !matches!(c, ';' | ',' | '(' | ')' | '"' | '\'') && !c.is_whitespace()
                }) {
                    self.pos += 1;
                }
                if start == self.pos {
                    return Err(format!("expected a value at position {start} of query"));
                }
                Ok(self.chars[start..self.pos].iter().collect())
            }
        }
    }
}

/// Every scalar reached by a dotted path; arrays on the way fan out, so `tags` or
/// `metadata.references.name` match when any element does. An object at the end stands for its
/// `name` (so `state==active` works for `{"name":"active"}` too).
pub(crate) fn field_values(doc: &Value, path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    collect(doc, &parts, &mut out);
    out
}

fn collect(value: &Value, parts: &[&str], out: &mut Vec<String>) {
    if let Value::Array(items) = value {
        for item in items {
            collect(item, parts, out);
        }
        return;
    }
    match parts.split_first() {
        Some((head, rest)) => {
            if let Some(next) = value.get(*head) {
                collect(next, rest, out);
            }
        }
        None => match value {
            Value::String(s) => out.push(s.clone()),
            Value::Number(n) => out.push(n.to_string()),
            Value::Bool(b) => out.push(b.to_string()),
            Value::Object(map) => {
                if let Some(Value::String(name)) = map.get("name") {
                    out.push(name.clone());
                }
            }
            _ => {}
        },
    }
}

pub(crate) fn matches(filter: &Filter, doc: &Value) -> bool {
    match filter {
        Filter::And(parts) => parts.iter().all(|f| matches(f, doc)),
        Filter::Or(parts) => parts.iter().any(|f| matches(f, doc)),
        Filter::Compare { field, op, values } => {
            let found = field_values(doc, field);
            let any = |test: &dyn Fn(&str, &str) -> bool| {
                found.iter().any(|f| values.iter().any(|v| test(f, v)))
            };
            match op {
                Op::Eq => any(&|f, v| glob(&f.to_lowercase(), &v.to_lowercase())),
                Op::EqCase => any(&|f, v| glob(f, v)),
                Op::Ne => !any(&|f, v| glob(&f.to_lowercase(), &v.to_lowercase())),
                Op::NeCase => !any(&|f, v| glob(f, v)),
                Op::In => any(&|f, v| f.eq_ignore_ascii_case(v)),
                Op::Out => !any(&|f, v| f.eq_ignore_ascii_case(v)),
                Op::Lt => any(&|f, v| compare(f, v).is_lt()),
                Op::Le => any(&|f, v| compare(f, v).is_le()),
                Op::Gt => any(&|f, v| compare(f, v).is_gt()),
                Op::Ge => any(&|f, v| compare(f, v).is_ge()),
            }
        }
    }
}

/// Orders numbers as numbers, Central timestamps (or epoch millis) as instants, anything else
/// as text.
fn compare(field: &str, value: &str) -> std::cmp::Ordering {
    let as_millis = |s: &str| {
        s.parse::<f64>().ok().or_else(|| {
            super::resources::parse_central_timestamp(s).map(|t| t.timestamp_millis() as f64)
        })
    };
    match (as_millis(field), as_millis(value)) {
        (Some(a), Some(b)) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
        _ => field.cmp(value),
    }
}

/// Wildcard match: `*` any run of characters, `_` exactly one.
fn glob(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    let (mut t, mut p) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription() -> Value {
        json!({
            "name": "finance-starter-free-2",
            "title": "Finance Starter - Free",
            "tags": ["billing", "eu"],
            "attributes": {"billingSystem": "recurly"},
            "metadata": {"id": "8a2e", "references": [
                {"kind": "Product", "name": "finance-starter"},
                {"kind": "ProductPlan", "name": "free"}]},
            "approval": {"state": "approved"},
            "state": {"name": "active"},
            "metadata_count": 3
        })
    }

    fn check(query: &str) -> bool {
        matches(&parse(query).unwrap(), &subscription())
    }

    #[test]
    fn equality_is_case_insensitive_with_wildcards() {
        assert!(check("approval.state==APPROVED"));
        assert!(check("name==finance-*"));
        assert!(check("name==*free_2"));
        assert!(!check("name==finance"));
        assert!(check("attributes.billingSystem==\"recurly\""));
        assert!(!check("approval.state===APPROVED"));
        assert!(check("approval.state=eq=approved"));
    }

    #[test]
    fn arrays_match_when_any_element_does() {
        assert!(check("tags==eu"));
        assert!(check(
            "metadata.references.name==finance-starter;metadata.references.kind==Product"
        ));
        assert!(!check("metadata.references.name==other"));
        assert!(check("state==active") && check("state.name==active"));
    }

    #[test]
    fn conjunction_disjunction_and_sets() {
        assert!(check("name==x,title==*Free"));
        assert!(check("name==x or (title==*Free and tags==billing)"));
        assert!(!check("name==x and tags==billing"));
        assert!(check("name=in=(\"a\",finance-starter-free-2)"));
        assert!(check("name=out=(a,b)"));
        assert!(check("approval.state!=pending"));
        assert!(check("missing.field!=x"));
        assert!(check("metadata_count>2;metadata_count<=3"));
    }

    #[test]
    fn malformed_queries_are_refused() {
        for bad in [
            "",
            "name",
            "name==",
            "name=in=a",
            "name=in=(a",
            "(name==a",
            "name==a;",
            "name~=a",
            "name==\"open",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
