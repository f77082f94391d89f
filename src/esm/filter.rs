//! `FilterCriteria`: which records reach the function. A record that
//! matches no pattern never does, and the mapping moves past it.
//!
//! AWS's filter rules for the parts a DynamoDB filter uses
//! (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html>):
//! equals (a string, number, `null` or `""`), `equals-ignore-case`,
//! `prefix`, `suffix`, `anything-but`, `numeric`, `exists` and `$or`,
//! matched on leaf values only, as recorded against AWS in LocalStack's
//! `test_dynamodb_event_filter` snapshots: `{"presentKey": [{"exists":
//! true}]}` does not match an attribute (its value is `{"S": ...}`, not a
//! leaf), and `numeric` never matches an `N` attribute (DynamoDB JSON
//! writes numbers as strings) but does match `ApproximateCreationDateTime`.

use serde_json::Value;

/// Patterns, any of which lets a record through (`FilterCriteria.Filters`).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    patterns: Vec<Pattern>,
}

/// Why a pattern is refused, naming the part to fix (AWS answers every
/// case with "Invalid filter pattern definition.").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter pattern definition: {0}")]
pub struct FilterError(String);

/// Fields that must all match.
#[derive(Debug, Clone, PartialEq)]
struct Pattern {
    fields: Vec<(Vec<String>, Vec<Rule>)>,
    /// `$or` groups: each must have one alternative that matches.
    any_of: Vec<Vec<Pattern>>,
}

/// One condition on the leaf values at a path.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// A string, number, `true`/`false` or `null`, matched exactly.
    Equals(Value),
    EqualsIgnoreCase(String),
    Prefix(String),
    Suffix(String),
    AnythingBut(Vec<Value>),
    /// One or two comparisons, all of which must hold.
    Numeric(Vec<(Comparison, f64)>),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Filter {
    /// Parses each pattern (JSON text, as `FilterCriteria.Filters[].Pattern`
    /// holds it).
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FilterError> {
        let patterns = patterns
            .iter()
            .map(|text| {
                let text = text.as_ref();
                let value: Value = serde_json::from_str(text)
                    .map_err(|e| FilterError(format!("{text}: not JSON ({e})")))?;
                Pattern::parse(&value, &mut Vec::new())
                    .map_err(|why| FilterError(format!("{text}: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether `record` (as Lambda delivers it) reaches the function.
    pub fn matches(&self, record: &Value) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(record))
    }
}

impl Pattern {
    fn parse(value: &Value, path: &mut Vec<String>) -> Result<Self, String> {
        let Value::Object(fields) = value else {
            return Err(format!("{} must be an object", shown(path)));
        };
        if fields.is_empty() {
            return Err(format!("{} is an empty object", shown(path)));
        }
        let mut pattern = Pattern {
            fields: Vec::new(),
            any_of: Vec::new(),
        };
        for (name, value) in fields {
            if name == "$or" {
                let Some(alternatives) = value.as_array().filter(|a| a.len() >= 2) else {
                    return Err(format!(
                        "$or at {} takes an array of two or more patterns",
                        shown(path)
                    ));
                };
                let alternatives = alternatives
                    .iter()
                    .map(|a| Pattern::parse(a, &mut path.clone()))
                    .collect::<Result<_, _>>()?;
                pattern.any_of.push(alternatives);
                continue;
            }
            path.push(name.clone());
            match value {
                Value::Object(_) => {
                    let nested = Pattern::parse(value, path)?;
                    pattern.fields.extend(nested.fields);
                    pattern.any_of.extend(nested.any_of);
                }
                Value::Array(rules) if !rules.is_empty() => {
                    let rules = rules
                        .iter()
                        .map(|r| Rule::parse(r).map_err(|why| format!("{}: {why}", shown(path))))
                        .collect::<Result<_, _>>()?;
                    pattern.fields.push((path.clone(), rules));
                }
                _ => {
                    return Err(format!(
                        "{} must be an object or a non-empty array of rules",
                        shown(path)
                    ));
                }
            }
            path.pop();
        }
        Ok(pattern)
    }

    fn matches(&self, record: &Value) -> bool {
        self.fields.iter().all(|(path, rules)| {
            let leaves = leaves_at(record, path);
            rules.iter().any(|rule| rule.matches(&leaves))
        }) && self
            .any_of
            .iter()
            .all(|alternatives| alternatives.iter().any(|p| p.matches(record)))
    }
}

impl Rule {
    fn parse(rule: &Value) -> Result<Self, String> {
        let object = match rule {
            Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {
                return Ok(Rule::Equals(rule.clone()));
            }
            Value::Object(o) if o.len() == 1 => o,
            _ => return Err(format!("{rule} is not a rule")),
        };
        let Some((operator, operand)) = object.iter().next() else {
            return Err(format!("{rule} is not a rule"));
        };
        let text = || {
            operand
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{operator} takes a string"))
        };
        match operator.as_str() {
            "prefix" => Ok(Rule::Prefix(text()?)),
            "suffix" => Ok(Rule::Suffix(text()?)),
            "equals-ignore-case" => Ok(Rule::EqualsIgnoreCase(text()?)),
            "exists" => operand
                .as_bool()
                .map(Rule::Exists)
                .ok_or_else(|| "exists takes true or false".to_owned()),
            "anything-but" => {
                let values = match operand {
                    Value::Array(a) if !a.is_empty() => a.clone(),
                    Value::String(_) | Value::Number(_) => vec![operand.clone()],
                    _ => return Err("anything-but takes a value or a list of values".into()),
                };
                if values.iter().all(|v| v.is_string() || v.is_number()) {
                    Ok(Rule::AnythingBut(values))
                } else {
                    Err("anything-but takes strings or numbers".into())
                }
            }
            "numeric" => numeric(operand).map(Rule::Numeric),
            other => Err(format!("{other} is not an operator Lambda filters know")),
        }
    }

    /// Whether the rule holds for a field whose leaf values are `leaves`
    /// (none when the field is missing or is not a leaf).
    fn matches(&self, leaves: &[&Value]) -> bool {
        match self {
            Rule::Exists(wanted) => leaves.is_empty() != *wanted,
            // Every other rule, anything-but included, holds when one of the
            // field's values matches (Event Ruler matches each value of an
            // array on its own: README "JSON Array Matching", its
            // correctness case "primarray: anything-but in array").
            _ => leaves.iter().any(|leaf| self.matches_leaf(leaf)),
        }
    }

    fn matches_leaf(&self, leaf: &Value) -> bool {
        match self {
            Rule::Equals(v) => same(v, leaf),
            Rule::EqualsIgnoreCase(s) => leaf
                .as_str()
                .is_some_and(|l| l.to_lowercase() == s.to_lowercase()),
            Rule::Prefix(p) => leaf.as_str().is_some_and(|l| l.starts_with(p.as_str())),
            Rule::Suffix(p) => leaf.as_str().is_some_and(|l| l.ends_with(p.as_str())),
            Rule::Numeric(comparisons) => {
                leaf.as_f64().filter(|_| leaf.is_number()).is_some_and(|n| {
                    comparisons.iter().all(|(c, x)| match c {
                        Comparison::Eq => n == *x,
                        Comparison::Lt => n < *x,
                        Comparison::Le => n <= *x,
                        Comparison::Gt => n > *x,
                        Comparison::Ge => n >= *x,
                    })
                })
            }
            Rule::AnythingBut(values) => !values.iter().any(|v| same(v, leaf)),
            Rule::Exists(_) => false,
        }
    }
}

/// `numeric`'s operand: `[op, n]` or a range `[">"|">=", n, "<"|"<=", m]`.
fn numeric(operand: &Value) -> Result<Vec<(Comparison, f64)>, String> {
    let parts = operand
        .as_array()
        .filter(|a| a.len() == 2 || a.len() == 4)
        .ok_or("numeric takes [operator, number] or a range of two")?;
    let comparisons = parts
        .chunks(2)
        .map(|pair| {
            let op = match pair[0].as_str() {
                Some("=") => Comparison::Eq,
                Some("<") => Comparison::Lt,
                Some("<=") => Comparison::Le,
                Some(">") => Comparison::Gt,
                Some(">=") => Comparison::Ge,
                _ => return Err(format!("{} is not =, <, <=, > or >=", pair[0])),
            };
            let n = pair[1]
                .as_f64()
                .filter(|_| pair[1].is_number())
                .ok_or_else(|| format!("{} is not a number", pair[1]))?;
            Ok((op, n))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if let [(low, _), (high, _)] = comparisons.as_slice() {
        let lower = matches!(low, Comparison::Gt | Comparison::Ge);
        let upper = matches!(high, Comparison::Lt | Comparison::Le);
        if !(lower && upper) {
            return Err(
                "a numeric range is a lower bound (> or >=), then an upper (< or <=)".into(),
            );
        }
    }
    Ok(comparisons)
}

/// Equal as filter values: numbers by value (`100` is `100.0`), the rest
/// exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The leaf values at `path`: arrays on the way and at the end are looked
/// through, objects are not leaves.
fn leaves_at<'a>(value: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut out = Vec::new();
    collect(value, path, &mut out);
    out
}

fn collect<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match (value, path.split_first()) {
        (Value::Array(items), _) => items.iter().for_each(|i| collect(i, path, out)),
        (Value::Object(o), Some((first, rest))) => {
            if let Some(v) = o.get(first) {
                collect(v, rest, out);
            }
        }
        (Value::Object(_), None) | (_, Some(_)) => {}
        (leaf, None) => out.push(leaf),
    }
}

fn shown(path: &[String]) -> String {
    if path.is_empty() {
        "the pattern".to_owned()
    } else {
        path.join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record as Lambda delivers it: an event-store item.
    fn record(event_name: &str, image: Value) -> Value {
        json!({
            "eventID": "1",
            "eventName": event_name,
            "eventSource": "aws:dynamodb",
            "dynamodb": {
                "ApproximateCreationDateTime": 1_795_348_800.0,
                "Keys": {"aggregateId": {"S": "prod-1"}, "version": {"N": "3"}},
                "NewImage": image,
                "SequenceNumber": "100",
            }
        })
    }

    fn passes(pattern: Value, record: &Value) -> bool {
        Filter::parse(&[pattern.to_string()])
            .unwrap()
            .matches(record)
    }

    #[test]
    fn the_event_name_filter_of_the_template_keeps_inserts() {
        let insert = record("INSERT", json!({"id": {"S": "a"}}));
        let modify = record("MODIFY", json!({"id": {"S": "a"}}));
        let pattern = json!({"eventName": ["INSERT"]});
        assert!(passes(pattern.clone(), &insert));
        assert!(!passes(pattern, &modify));
        // An OR of values (AWS's content_or_filter case).
        let either = json!({"eventName": ["INSERT", "MODIFY"]});
        assert!(passes(either.clone(), &insert) && passes(either, &modify));
    }

    #[test]
    fn a_content_filter_names_the_dynamodb_type() {
        // AWS's content_filter_type: the "S" must be in the pattern.
        let with = record("INSERT", json!({"presentKey": {"S": "presentValue"}}));
        let without = record("INSERT", json!({"id": {"S": "id_value_2"}}));
        let typed = json!({"dynamodb": {"NewImage": {"presentKey": {"S": ["presentValue"]}}}});
        let untyped = json!({"dynamodb": {"NewImage": {"presentKey": ["presentValue"]}}});
        assert!(passes(typed.clone(), &with));
        assert!(!passes(typed, &without));
        assert!(!passes(untyped, &with));
    }

    #[test]
    fn exists_looks_at_leaves_only() {
        // AWS's exists_filter_type and exists_false_filter recordings.
        let with = record("INSERT", json!({"presentKey": {"S": "presentValue"}}));
        let without = record("INSERT", json!({"id": {"S": "id_value_1"}}));
        let typed = json!({"dynamodb": {"NewImage": {"presentKey": {"S": [{"exists": true}]}}}});
        assert!(passes(typed.clone(), &with));
        assert!(!passes(typed, &without));
        let untyped = json!({"dynamodb": {"NewImage": {"presentKey": [{"exists": false}]}}});
        assert!(passes(untyped.clone(), &without));
        assert!(
            passes(untyped, &with),
            "an attribute is an object, not a leaf"
        );
    }

    #[test]
    fn numeric_matches_numbers_and_never_a_dynamodb_n_string() {
        // AWS's numeric_filter: only the item with 42 got through (by
        // anything-but), 101 matched neither rule.
        let pattern = json!({"dynamodb": {"NewImage": {"numericFilter": {
            "N": [{"numeric": [">", 100]}, {"anything-but": "101"}]
        }}}});
        let low = record("INSERT", json!({"numericFilter": {"N": "42"}}));
        let high = record("INSERT", json!({"numericFilter": {"N": "101"}}));
        assert!(passes(pattern.clone(), &low));
        assert!(!passes(pattern, &high));
        // AWS's date_time_conversion: ApproximateCreationDateTime is a number.
        let created = json!({"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}});
        assert!(passes(created, &low));
        let range = json!({"dynamodb": {"ApproximateCreationDateTime": [
            {"numeric": [">=", 1_795_348_800, "<", 1_795_348_801]}
        ]}});
        assert!(passes(range, &low));
        let equal = json!({"dynamodb": {"ApproximateCreationDateTime": [{"numeric": ["=", 5]}]}});
        assert!(!passes(equal, &low));
    }

    #[test]
    fn prefix_suffix_and_ignore_case_match_strings() {
        let r = record("INSERT", json!({"prefix": {"S": "us-1-other-suffix"}}));
        let other = record("INSERT", json!({"prefix": {"S": "other-suffix"}}));
        let prefix = json!({"dynamodb": {"NewImage": {"prefix": {"S": [{"prefix": "us-1"}]}}}});
        assert!(passes(prefix.clone(), &r));
        assert!(!passes(prefix, &other));
        let suffix = json!({"dynamodb": {"NewImage": {"prefix": {"S": [{"suffix": "-suffix"}]}}}});
        assert!(passes(suffix.clone(), &r) && passes(suffix, &other));
        let case = json!({"eventName": [{"equals-ignore-case": "insert"}]});
        assert!(passes(case, &r));
    }

    #[test]
    fn anything_but_needs_the_field_and_a_value_outside_the_list() {
        let r = record("REMOVE", json!({"id": {"S": "a"}}));
        assert!(!passes(
            json!({"eventName": [{"anything-but": ["REMOVE", "MODIFY"]}]}),
            &r
        ));
        assert!(passes(
            json!({"eventName": [{"anything-but": "INSERT"}]}),
            &r
        ));
        assert!(!passes(json!({"missing": [{"anything-but": "x"}]}), &r));
    }

    #[test]
    fn anything_but_on_a_list_matches_when_one_value_is_outside_it() {
        // As Event Ruler matches an array: each value on its own, the field
        // matches when any does (aws/event-ruler, correctness-cases.json
        // "primarray: anything-but in array": tags ["banned", "ok"]).
        let tags = |values: Value| record("INSERT", json!({"tags": {"SS": values}}));
        let pattern =
            json!({"dynamodb": {"NewImage": {"tags": {"SS": [{"anything-but": "banned"}]}}}});
        assert!(passes(pattern.clone(), &tags(json!(["banned", "ok"]))));
        assert!(passes(pattern.clone(), &tags(json!(["ok", "fine"]))));
        assert!(!passes(pattern.clone(), &tags(json!(["banned"]))));
        let list = json!({"dynamodb": {"NewImage": {"tags": {"SS": [{"anything-but": ["banned", "spam"]}]}}}});
        assert!(passes(list.clone(), &tags(json!(["spam", "ok"]))));
        assert!(!passes(list, &tags(json!(["spam", "banned"]))));
    }

    #[test]
    fn fields_and_or_all_patterns_of_a_filter() {
        let insert = record("INSERT", json!({"eventType": {"S": "ProductCreated"}}));
        let remove = record("REMOVE", json!({"eventType": {"S": "ProductCreated"}}));
        let and = json!({
            "eventName": ["INSERT"],
            "dynamodb": {"NewImage": {"eventType": {"S": [{"prefix": "Product"}]}}}
        });
        assert!(passes(and.clone(), &insert));
        assert!(!passes(and, &remove));
        let or = json!({"$or": [
            {"eventName": ["REMOVE"]},
            {"dynamodb": {"Keys": {"version": {"N": ["4"]}}}}
        ]});
        assert!(passes(or.clone(), &remove));
        assert!(!passes(or, &insert));
        // Two filters: either lets a record through.
        let filter = Filter::parse(&[
            r#"{"eventName": ["REMOVE"]}"#,
            r#"{"eventName": ["INSERT"]}"#,
        ])
        .unwrap();
        assert!(filter.matches(&insert) && filter.matches(&remove));
        // No filter: everything.
        assert!(Filter::parse::<&str>(&[]).unwrap().matches(&remove));
    }

    #[test]
    fn null_and_empty_match_only_themselves() {
        let r = json!({"a": null, "b": "", "c": "x"});
        assert!(passes(json!({"a": [null]}), &r));
        assert!(passes(json!({"b": [""]}), &r));
        assert!(!passes(json!({"c": [null]}), &r));
        assert!(!passes(json!({"missing": [null]}), &r));
    }

    #[test]
    fn a_pattern_aws_refuses_is_refused_naming_the_part() {
        for (pattern, part) in [
            ("single-string", "not JSON"),
            (r#"[{"eventName": ["INSERT"]}]"#, "must be an object"),
            (r#"{"eventName": "INSERT"}"#, "eventName must be"),
            (r#"{"eventName": []}"#, "eventName must be"),
            (
                r#"{"eventName": [{"wildcard": "IN*"}]}"#,
                "wildcard is not an operator",
            ),
            (
                r#"{"n": [{"numeric": ["<", 5, ">", 1]}]}"#,
                "a numeric range",
            ),
            (r#"{"n": [{"numeric": ["~", 5]}]}"#, "is not =, <"),
            (r#"{"n": [{"exists": "yes"}]}"#, "exists takes"),
            (r#"{"$or": [{"a": ["b"]}]}"#, "$or"),
        ] {
            let err = Filter::parse(&[pattern]).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid filter pattern definition"),
                "{err}"
            );
            assert!(err.contains(part), "{pattern}: {err}");
        }
    }
}
