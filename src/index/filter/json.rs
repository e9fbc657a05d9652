//! The JSON form of a filter, the operators of MongoDB and Amazon S3 Vectors:
//!
//! ```json
//! {"category": "shoes", "price": {"$gte": 10, "$lt": 50}, "$or": [{"color": "red"}, {"color": {"$in": ["blue", "navy"]}}]}
//! ```
//!
//! An object is the `and` of its entries. An entry is `field: value` (equality), `field:
//! {"$op": …, …}` (the `and` of its operators: `$eq`, `$ne`, `$in`, `$nin`, `$gt`, `$gte`, `$lt`,
//! `$lte`, `$exists`), or `"$and"`/`"$or": [filters]`, `"$not": filter`.

use serde_json::{Map, Value};

use super::{value_text, Field, Filter, FilterError, Range};

/// Parses and checks a JSON filter.
pub fn parse(value: &Value) -> Result<Filter, FilterError> {
    let filter = filter(value, "the filter")?.simplified();
    filter.check()?;
    Ok(filter)
}

fn filter(value: &Value, at: &str) -> Result<Filter, FilterError> {
    let Value::Object(entries) = value else {
        return Err(FilterError::new(format!(
            "{at} must be an object such as {{\"color\": \"red\"}}, got {}",
            kind(value)
        )));
    };
    let mut all = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        all.push(match name.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = v else {
                    return Err(FilterError::new(format!(
                        "{name} takes an array of filters, got {}",
                        kind(v)
                    )));
                };
                let parts = items
                    .iter()
                    .map(|x| filter(x, &format!("each filter of {name}")))
                    .collect::<Result<Vec<_>, _>>()?;
                if name == "$and" {
                    Filter::And(parts)
                } else {
                    Filter::Or(parts)
                }
            }
            "$not" => Filter::Not(Box::new(filter(v, "the filter of $not")?)),
            op if op.starts_with('$') => {
                return Err(FilterError::new(format!(
                    "unknown operator {op} at the top of a filter (known: $and, $or, $not)"
                )))
            }
            field => condition(Field::parse(field)?, v)?,
        });
    }
    Ok(single(all))
}

/// What one field must be.
fn condition(field: Field, value: &Value) -> Result<Filter, FilterError> {
    let ops = match value {
        Value::Object(ops) if ops.keys().all(|k| k.starts_with('$')) && !ops.is_empty() => ops,
        Value::Object(_) => {
            return Err(FilterError::new(format!(
                "the condition on {field} must be a value or operators such as {{\"$eq\": …}}"
            )))
        }
        Value::Array(_) => {
            return Err(FilterError::new(format!(
                "{field}: a list of values needs {{\"$in\": [...]}}"
            )))
        }
        v => return Ok(Filter::Eq(field.clone(), text(&field, "equality", v)?)),
    };
    let mut all = Vec::with_capacity(ops.len());
    let mut range = Range::default();
    for (op, v) in ops {
        match op.as_str() {
            "$eq" => all.push(Filter::Eq(field.clone(), text(&field, op, v)?)),
            "$ne" => all.push(Filter::Not(Box::new(Filter::Eq(
                field.clone(),
                text(&field, op, v)?,
            )))),
            "$in" => all.push(Filter::In(field.clone(), set(&field, op, v)?)),
            "$nin" => all.push(Filter::Not(Box::new(Filter::In(
                field.clone(),
                set(&field, op, v)?,
            )))),
            "$gt" => range.lower = Some((number(&field, op, v)?, false)),
            "$gte" => range.lower = Some((number(&field, op, v)?, true)),
            "$lt" => range.upper = Some((number(&field, op, v)?, false)),
            "$lte" => range.upper = Some((number(&field, op, v)?, true)),
            "$exists" => match v {
                Value::Bool(true) => all.push(Filter::Exists(field.clone())),
                Value::Bool(false) => all.push(Filter::Not(Box::new(Filter::Exists(field.clone())))),
                _ => {
                    return Err(FilterError::new(format!(
                        "{field}: $exists takes true or false, got {}",
                        kind(v)
                    )))
                }
            },
            _ => {
                return Err(FilterError::new(format!(
                    "{field}: unknown operator {op} (known: $eq, $ne, $in, $nin, $gt, $gte, $lt, $lte, $exists)"
                )))
            }
        }
    }
    if range != Range::default() {
        all.push(Filter::Range(field, range));
    }
    Ok(single(all))
}

fn single(mut all: Vec<Filter>) -> Filter {
    if all.len() == 1 {
        all.remove(0)
    } else {
        Filter::And(all)
    }
}

fn text(field: &Field, op: &str, v: &Value) -> Result<String, FilterError> {
    value_text(v).ok_or_else(|| {
        FilterError::new(format!(
            "{field}: {op} compares with a string, number or boolean, got {}",
            kind(v)
        ))
    })
}

fn set(field: &Field, op: &str, v: &Value) -> Result<Vec<String>, FilterError> {
    let Value::Array(items) = v else {
        return Err(FilterError::new(format!(
            "{field}: {op} takes an array of values, got {}",
            kind(v)
        )));
    };
    items.iter().map(|x| text(field, op, x)).collect()
}

fn number(field: &Field, op: &str, v: &Value) -> Result<f64, FilterError> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| FilterError::new(format!("{field}: {op} takes a number, got {}", kind(v))))
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The JSON form of a filter (what [`parse`] reads back as the same filter).
pub fn to_json(filter: &Filter) -> Value {
    let field = |f: &Field| match f {
        Field::Category => "category".to_string(),
        Field::Metadata(name) => format!("metadata.{name}"),
    };
    let one = |f: &Field, cond: Value| {
        let mut m = Map::new();
        m.insert(field(f), cond);
        Value::Object(m)
    };
    let op = |name: &str, v: Value| {
        let mut m = Map::new();
        m.insert(name.into(), v);
        Value::Object(m)
    };
    match filter {
        Filter::Eq(f, v) => one(f, op("$eq", Value::String(v.clone()))),
        Filter::In(f, vs) => one(
            f,
            op("$in", vs.iter().cloned().map(Value::String).collect()),
        ),
        Filter::Range(f, r) => {
            let mut m = Map::new();
            if let Some((b, inclusive)) = r.lower {
                m.insert(if inclusive { "$gte" } else { "$gt" }.into(), b.into());
            }
            if let Some((b, inclusive)) = r.upper {
                m.insert(if inclusive { "$lte" } else { "$lt" }.into(), b.into());
            }
            one(f, Value::Object(m))
        }
        Filter::Exists(f) => one(f, op("$exists", Value::Bool(true))),
        Filter::And(v) => op("$and", v.iter().map(to_json).collect()),
        Filter::Or(v) => op("$or", v.iter().map(to_json).collect()),
        Filter::Not(x) => op("$not", to_json(x)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(name: &str) -> Field {
        Field::Metadata(name.into())
    }

    #[test]
    fn the_operators() {
        let f = parse(&json!({
            "category": "shoes",
            "price": {"$gte": 10, "$lt": 50},
            "$or": [{"color": "red"}, {"color": {"$in": ["blue", "navy"]}}],
            "brand": {"$exists": true, "$ne": "acme"},
            "size": {"$nin": [40, 41]}
        }))
        .unwrap();
        let Filter::And(parts) = &f else {
            panic!("{f:?}")
        };
        assert_eq!(
            parts.len(),
            6,
            "the conditions on brand join the top and: {parts:?}"
        );
        assert!(parts.contains(&Filter::Eq(Field::Category, "shoes".into())));
        assert!(parts.contains(&Filter::Range(
            meta("price"),
            Range {
                lower: Some((10.0, true)),
                upper: Some((50.0, false))
            }
        )));
        assert!(parts.contains(&Filter::Or(vec![
            Filter::Eq(meta("color"), "red".into()),
            Filter::In(meta("color"), vec!["blue".into(), "navy".into()]),
        ])));
        assert!(parts.contains(&Filter::Exists(meta("brand"))));
        assert!(parts.contains(&Filter::Not(Box::new(Filter::Eq(
            meta("brand"),
            "acme".into()
        )))));
        assert!(parts.contains(&Filter::Not(Box::new(Filter::In(
            meta("size"),
            vec!["40".into(), "41".into()]
        )))));
    }

    #[test]
    fn json_round_trips() {
        let f = parse(&json!({"$not": {"category": {"$in": ["a", "b"]}}, "n": {"$gt": 1.5}, "metadata.category": true, "x": {"$exists": true}}))
            .unwrap();
        assert_eq!(parse(&to_json(&f)).unwrap(), f);
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        let err = |v: Value| parse(&v).unwrap_err().0;
        assert!(err(json!([1])).contains("must be an object"));
        assert!(err(json!("red")).contains("must be an object"));
        assert!(err(json!({"$xor": []})).contains("unknown operator $xor"));
        assert!(err(json!({"color": {"$like": "r%"}})).contains("unknown operator $like"));
        assert!(err(json!({"color": ["red"]})).contains("$in"));
        assert!(err(json!({"color": null})).contains("got null"));
        assert!(err(json!({"price": {"$gt": "ten"}})).contains("$gt takes a number"));
        assert!(err(json!({"color": {"$in": "red"}})).contains("takes an array"));
        assert!(err(json!({"b": {"$exists": 1}})).contains("$exists takes true or false"));
        assert!(err(json!({"$and": {"a": 1}})).contains("$and takes an array"));
        assert!(err(json!({"": 1})).contains("field name is empty"));
        assert!(err(json!({"c": {"x": 1}})).contains("must be a value or operators"));
    }
}
