//! One field's values across a segment: a bitmap of items per text value (equality and sets
//! are a lookup), the numeric values sorted (a range is a binary search and one pass over the
//! values inside it), and the items that have the field at all.

use std::collections::HashMap;

use roaring::RoaringBitmap;

use super::{value_number, value_text, Field, Range};
use crate::index::segment::ItemRecord;

/// The values of one field in one segment, over all its items (live or not).
#[derive(Debug, Default)]
pub struct FieldIndex {
    text: HashMap<String, RoaringBitmap>,
    /// (value, item), sorted by value.
    numbers: Vec<(f64, u32)>,
    present: RoaringBitmap,
}

impl FieldIndex {
    /// The indexes of `fields` from one pass over a segment's records.
    pub fn build<'r>(
        fields: &[&Field],
        records: impl IntoIterator<Item = (u32, &'r ItemRecord)>,
    ) -> Vec<FieldIndex> {
        let mut out: Vec<FieldIndex> = fields.iter().map(|_| FieldIndex::default()).collect();
        for (id, rec) in records {
            for (field, index) in fields.iter().zip(out.iter_mut()) {
                for v in field.values_in(&rec.category, &rec.metadata) {
                    index.add(id, &v);
                }
            }
        }
        for index in &mut out {
            index.numbers.sort_by(|a, b| a.0.total_cmp(&b.0));
            index.numbers.shrink_to_fit();
        }
        out
    }

    /// An index with no values (a field no item has).
    pub fn empty() -> &'static FieldIndex {
        static EMPTY: std::sync::OnceLock<FieldIndex> = std::sync::OnceLock::new();
        EMPTY.get_or_init(FieldIndex::default)
    }

    fn add(&mut self, id: u32, value: &serde_json::Value) {
        let Some(text) = value_text(value) else {
            return;
        };
        self.present.insert(id);
        if let Some(x) = value_number(value) {
            self.numbers.push((x, id));
        }
        self.text.entry(text).or_default().insert(id);
    }

    /// Items whose text is `value`.
    pub fn equal(&self, value: &str) -> RoaringBitmap {
        self.text.get(value).cloned().unwrap_or_default()
    }

    /// Items with a number in `range`.
    pub fn within(&self, range: &Range) -> RoaringBitmap {
        let from = match range.lower {
            Some((b, true)) => self.numbers.partition_point(|&(x, _)| x < b),
            Some((b, false)) => self.numbers.partition_point(|&(x, _)| x <= b),
            None => 0,
        };
        let to = match range.upper {
            Some((b, true)) => self.numbers.partition_point(|&(x, _)| x <= b),
            Some((b, false)) => self.numbers.partition_point(|&(x, _)| x < b),
            None => self.numbers.len(),
        };
        let mut ids: Vec<u32> = self.numbers[from..to.max(from)]
            .iter()
            .map(|&(_, id)| id)
            .collect();
        // A bitmap is built fastest from sorted ids (and an item with several numbers in the
        // range appears once).
        ids.sort_unstable();
        ids.dedup();
        RoaringBitmap::from_sorted_iter(ids).unwrap_or_default()
    }

    /// Items that have the field.
    pub fn present(&self) -> &RoaringBitmap {
        &self.present
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(category: &str, metadata: serde_json::Value) -> ItemRecord {
        ItemRecord {
            key: String::new(),
            source: String::new(),
            etag: String::new(),
            size: 0,
            category: category.into(),
            metadata: metadata.as_object().unwrap().clone(),
            sequencer: None,
        }
    }

    #[test]
    fn equality_ranges_and_presence() {
        let recs = [
            rec("shoes", json!({"price": "10", "color": "red"})),
            rec("shoes", json!({"price": "25.5", "color": ["red", "blue"]})),
            rec("bags", json!({"price": "n/a"})),
            rec("bags", json!({})),
        ];
        let price = Field::Metadata("price".into());
        let color = Field::Metadata("color".into());
        let idx = FieldIndex::build(
            &[&Field::Category, &price, &color],
            recs.iter().enumerate().map(|(i, r)| (i as u32, r)),
        );
        let ids = |b: RoaringBitmap| b.iter().collect::<Vec<_>>();
        assert_eq!(ids(idx[0].equal("bags")), [2, 3]);
        assert_eq!(
            ids(idx[2].equal("red")),
            [0, 1],
            "arrays match by any element"
        );
        assert_eq!(ids(idx[2].equal("blue")), [1]);
        assert_eq!(ids(idx[1].equal("n/a")), [2]);
        let r = |lower, upper| Range { lower, upper };
        assert_eq!(ids(idx[1].within(&r(Some((10.0, true)), None))), [0, 1]);
        assert_eq!(ids(idx[1].within(&r(Some((10.0, false)), None))), [1]);
        assert_eq!(ids(idx[1].within(&r(None, Some((25.5, false))))), [0]);
        assert!(idx[1]
            .within(&r(Some((30.0, true)), Some((20.0, true))))
            .is_empty());
        assert_eq!(ids(idx[1].present().clone()), [0, 1, 2]);
        assert_eq!(ids(idx[2].present().clone()), [0, 1]);
    }
}
