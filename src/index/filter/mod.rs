//! Metadata filters: which items a search may return, evaluated inside the search as each
//! segment's candidate set (so a selective filter still yields `k` results where `k` exist).
//!
//! - [`json`]: the JSON form of a request body (`{"color": "red", "price": {"$lt": 50}}`).
//! - [`text`]: the compact form of a query string (`color=red,price<50`).
//! - [`fields`]: a segment's per-field value bitmaps, built on a field's first use.
//!
//! A field is the item's `category` or a metadata field (S3 user metadata, CSV columns); a
//! metadata field that is itself called `category` is `metadata.category`. Equality compares
//! text: a metadata value is its string, a JSON number its shortest form (`10`, `2.5`), a
//! boolean `true`/`false`. A range compares numbers: a value is a number when it is a JSON
//! number or a string that parses as one (`"12.5"`, `" 3 "`); other values never match a range.
//! `ne`/`nin` and `not` also match items that lack the field (as in MongoDB and S3 Vectors).

pub mod fields;
pub mod json;
pub mod text;

use std::borrow::Cow;

use roaring::RoaringBitmap;

pub use fields::FieldIndex;

/// Most clauses (tests and `and`/`or`/`not` nodes) in one filter.
pub const MAX_CLAUSES: usize = 256;
/// Deepest nesting of `and`/`or`/`not`.
pub const MAX_DEPTH: usize = 16;
/// Most values in one set (`in`/`nin`).
pub const MAX_SET: usize = 1024;
/// Longest compact filter text, in bytes.
pub const MAX_TEXT: usize = 8192;

/// A filter over items' fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The field's text is this value.
    Eq(Field, String),
    /// The field's text is one of these values.
    In(Field, Vec<String>),
    /// The field's number lies in the range.
    Range(Field, Range),
    /// The item has the field.
    Exists(Field),
    /// All of these (an empty `And` keeps every item).
    And(Vec<Filter>),
    /// Any of these (an empty `Or` keeps none).
    Or(Vec<Filter>),
    /// Not this.
    Not(Box<Filter>),
}

/// What a filter tests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// The item's category (its folder).
    Category,
    /// A metadata field.
    Metadata(String),
}

impl Field {
    /// `category` is the item's category, `metadata.X` the metadata field `X`, anything else a
    /// metadata field of that name.
    pub fn parse(name: &str) -> Result<Field, FilterError> {
        if name.is_empty() {
            return Err(FilterError::new("a field name is empty"));
        }
        Ok(match name {
            "category" => Field::Category,
            _ => Field::Metadata(name.strip_prefix("metadata.").unwrap_or(name).to_string()),
        })
    }
}

impl Field {
    /// An item's values of this field: its category, or the metadata value (each element of
    /// an array).
    pub fn values_in<'a>(
        &self,
        category: &str,
        metadata: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Vec<Cow<'a, serde_json::Value>> {
        match self {
            Field::Category => vec![Cow::Owned(serde_json::Value::String(category.to_string()))],
            Field::Metadata(name) => match metadata.get(name) {
                Some(serde_json::Value::Array(items)) => items.iter().map(Cow::Borrowed).collect(),
                Some(v) => vec![Cow::Borrowed(v)],
                None => Vec::new(),
            },
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Category => f.write_str("category"),
            Field::Metadata(name) => f.write_str(name),
        }
    }
}

/// A numeric range; each bound is (value, inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    /// The lower bound.
    pub lower: Option<(f64, bool)>,
    /// The upper bound.
    pub upper: Option<(f64, bool)>,
}

impl Range {
    /// The range of the values in both (an empty range when they do not meet).
    pub fn intersect(&self, other: &Range) -> Range {
        // The tighter bound of each side; at equal values an exclusive bound is the tighter.
        let lower = match (self.lower, other.lower) {
            (Some(a), Some(b)) => Some(if a.0 > b.0 || (a.0 == b.0 && !a.1) {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        };
        let upper = match (self.upper, other.upper) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 || (a.0 == b.0 && !a.1) {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        };
        Range { lower, upper }
    }

    /// Whether `x` lies in the range.
    pub fn contains(&self, x: f64) -> bool {
        let above = match self.lower {
            Some((b, true)) => x >= b,
            Some((b, false)) => x > b,
            None => true,
        };
        let below = match self.upper {
            Some((b, true)) => x <= b,
            Some((b, false)) => x < b,
            None => true,
        };
        above && below
    }
}

/// A malformed filter: the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

impl FilterError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        FilterError(message.into())
    }
}

/// The text a stored or requested value compares as, if it has one: a string itself, a number
/// its JSON form, a boolean `true`/`false` (null, arrays and objects have none).
pub fn value_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The number a stored value is, if any: a JSON number, or a string that parses as a finite one.
pub fn value_number(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

/// The field indexes of one segment that a filter's evaluation reads.
pub struct Indexes<'f> {
    fields: Vec<&'f Field>,
    indexes: Vec<std::sync::Arc<FieldIndex>>,
}

impl<'f> Indexes<'f> {
    /// `indexes[i]` is the index of `fields[i]`.
    pub fn new(fields: Vec<&'f Field>, indexes: Vec<std::sync::Arc<FieldIndex>>) -> Self {
        Indexes { fields, indexes }
    }

    /// The index of `field` (an empty one for a field not given).
    pub fn get(&self, field: &Field) -> &FieldIndex {
        match self.fields.iter().position(|f| *f == field) {
            Some(i) if i < self.indexes.len() => &self.indexes[i],
            _ => FieldIndex::empty(),
        }
    }
}

impl Filter {
    /// The same filter with nested `and`s flattened and the ranges of one field in an `and`
    /// merged into one (`price>=10,price<50` is one pass over the prices between, not two
    /// passes over nearly all of them).
    pub fn simplified(self) -> Filter {
        match self {
            Filter::And(parts) => {
                let mut flat = Vec::with_capacity(parts.len());
                for p in parts {
                    match p.simplified() {
                        Filter::And(inner) => flat.extend(inner),
                        other => flat.push(other),
                    }
                }
                let mut out: Vec<Filter> = Vec::with_capacity(flat.len());
                for p in flat {
                    if let Filter::Range(f, r) = &p {
                        if let Some(Filter::Range(_, merged)) = out
                            .iter_mut()
                            .find(|x| matches!(x, Filter::Range(g, _) if g == f))
                        {
                            *merged = merged.intersect(r);
                            continue;
                        }
                    }
                    out.push(p);
                }
                if out.len() == 1 {
                    out.remove(0)
                } else {
                    Filter::And(out)
                }
            }
            Filter::Or(parts) => Filter::Or(parts.into_iter().map(Filter::simplified).collect()),
            Filter::Not(x) => Filter::Not(Box::new(x.simplified())),
            other => other,
        }
    }

    /// Every field the filter tests, each once, in order.
    pub fn fields(&self) -> Vec<&Field> {
        let mut out: Vec<&Field> = Vec::new();
        self.visit(&mut |f| {
            if !out.contains(&f) {
                out.push(f);
            }
        });
        out
    }

    fn visit<'a>(&'a self, see: &mut impl FnMut(&'a Field)) {
        match self {
            Filter::Eq(f, _) | Filter::In(f, _) | Filter::Range(f, _) | Filter::Exists(f) => see(f),
            Filter::And(v) | Filter::Or(v) => v.iter().for_each(|x| x.visit(see)),
            Filter::Not(x) => x.visit(see),
        }
    }

    /// Checks the size limits ([`MAX_CLAUSES`], [`MAX_DEPTH`], [`MAX_SET`]).
    pub fn check(&self) -> Result<(), FilterError> {
        fn walk(f: &Filter, depth: usize, clauses: &mut usize) -> Result<(), FilterError> {
            *clauses += 1;
            if *clauses > MAX_CLAUSES {
                return Err(FilterError::new(format!(
                    "the filter has more than {MAX_CLAUSES} clauses"
                )));
            }
            if depth > MAX_DEPTH {
                return Err(FilterError::new(format!(
                    "the filter nests deeper than {MAX_DEPTH} levels"
                )));
            }
            match f {
                Filter::In(field, values) if values.len() > MAX_SET => Err(FilterError::new(
                    format!("the set of {field} has more than {MAX_SET} values"),
                )),
                Filter::And(v) | Filter::Or(v) => {
                    v.iter().try_for_each(|x| walk(x, depth + 1, clauses))
                }
                Filter::Not(x) => walk(x, depth + 1, clauses),
                _ => Ok(()),
            }
        }
        walk(self, 0, &mut 0)
    }

    /// The items of `universe` that match, given each tested field's index (`index` answers
    /// for every field of [`Filter::fields`]).
    pub fn eval(&self, universe: &RoaringBitmap, indexes: &Indexes) -> RoaringBitmap {
        let index = |f: &Field| indexes.get(f);
        match self {
            Filter::Eq(f, v) => index(f).equal(v) & universe,
            Filter::In(f, vs) => {
                let field = index(f);
                let mut out = RoaringBitmap::new();
                for v in vs {
                    out |= field.equal(v);
                }
                out & universe
            }
            Filter::Range(f, r) => index(f).within(r) & universe,
            Filter::Exists(f) => index(f).present() & universe,
            Filter::And(v) => {
                let mut out = universe.clone();
                for x in v {
                    if out.is_empty() {
                        break;
                    }
                    out = x.eval(&out, indexes);
                }
                out
            }
            Filter::Or(v) => {
                let mut out = RoaringBitmap::new();
                for x in v {
                    out |= x.eval(universe, indexes);
                }
                out
            }
            Filter::Not(x) => universe - x.eval(universe, indexes),
        }
    }

    /// Whether one item matches, from its category and metadata (the brute-force evaluation
    /// that tests compare the indexed one with).
    pub fn matches(
        &self,
        category: &str,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let values = |f: &Field| f.values_in(category, metadata);
        match self {
            Filter::Eq(f, v) => values(f).iter().any(|x| value_text(x).as_ref() == Some(v)),
            Filter::In(f, vs) => values(f)
                .iter()
                .any(|x| value_text(x).is_some_and(|t| vs.contains(&t))),
            Filter::Range(f, r) => values(f)
                .iter()
                .any(|x| value_number(x).is_some_and(|n| r.contains(n))),
            Filter::Exists(f) => !values(f).is_empty(),
            Filter::And(v) => v.iter().all(|x| x.matches(category, metadata)),
            Filter::Or(v) => v.iter().any(|x| x.matches(category, metadata)),
            Filter::Not(x) => !x.matches(category, metadata),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_respect_their_bounds() {
        let r = Range {
            lower: Some((1.0, true)),
            upper: Some((3.0, false)),
        };
        assert!(r.contains(1.0) && r.contains(2.9));
        assert!(!r.contains(0.9) && !r.contains(3.0));
        assert!(Range::default().contains(-1e300));
    }

    #[test]
    fn ranges_of_one_field_merge_and_ands_flatten() {
        let price = Field::Metadata("price".into());
        let r = |lower, upper| Filter::Range(price.clone(), Range { lower, upper });
        let eq = Filter::Eq(Field::Category, "a".into());
        let f = Filter::And(vec![
            r(Some((10.0, true)), None),
            Filter::And(vec![eq.clone(), r(None, Some((50.0, false)))]),
            r(Some((10.0, false)), Some((60.0, true))),
        ]);
        assert_eq!(
            f.simplified(),
            Filter::And(vec![r(Some((10.0, false)), Some((50.0, false))), eq])
        );
        let apart = Range {
            lower: Some((5.0, true)),
            upper: None,
        }
        .intersect(&Range {
            lower: None,
            upper: Some((1.0, true)),
        });
        assert!(!apart.contains(3.0) && !apart.contains(5.0) && !apart.contains(1.0));
    }

    #[test]
    fn values_have_text_and_numbers() {
        use serde_json::json;
        assert_eq!(value_text(&json!("red")).as_deref(), Some("red"));
        assert_eq!(value_text(&json!(10)).as_deref(), Some("10"));
        assert_eq!(value_text(&json!(2.5)).as_deref(), Some("2.5"));
        assert_eq!(value_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(value_text(&json!(null)), None);
        assert_eq!(value_number(&json!(" 12.5 ")), Some(12.5));
        assert_eq!(value_number(&json!(7)), Some(7.0));
        assert_eq!(value_number(&json!("NaN")), None);
        assert_eq!(value_number(&json!("12 cm")), None);
    }

    #[test]
    fn fields_are_named_by_category_or_metadata() {
        assert_eq!(Field::parse("category").unwrap(), Field::Category);
        assert_eq!(
            Field::parse("metadata.category").unwrap(),
            Field::Metadata("category".into())
        );
        assert_eq!(
            Field::parse("brand").unwrap(),
            Field::Metadata("brand".into())
        );
        assert!(Field::parse("").is_err());
    }

    #[test]
    fn limits_are_checked() {
        let eq = Filter::Eq(Field::Category, "a".into());
        let mut deep = eq.clone();
        for _ in 0..MAX_DEPTH + 1 {
            deep = Filter::Not(Box::new(deep));
        }
        assert!(deep.check().unwrap_err().0.contains("deeper"));
        let wide = Filter::And(vec![eq.clone(); MAX_CLAUSES + 1]);
        assert!(wide.check().unwrap_err().0.contains("clauses"));
        let big = Filter::In(Field::Category, vec!["x".into(); MAX_SET + 1]);
        assert!(big.check().unwrap_err().0.contains("values"));
        assert!(Filter::And(vec![eq; 10]).check().is_ok());
    }
}
