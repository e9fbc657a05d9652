//! What travels with an image besides its pixels: its category (the folder of its key) and
//! metadata from an optional CSV file.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// File name endings that are indexed (and trained on); other files are counted and ignored.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// Whether a key names an image by its extension (case-insensitive).
pub fn is_image_name(key: &str) -> bool {
    key.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// The category of a key is the name of the folder it is in: `catalog/shoes/1.jpg` → `shoes`.
/// A key at the root has no category (empty string).
pub fn category_of(key: &str) -> &str {
    let mut parts = key.rsplit('/');
    parts.next();
    parts.next().unwrap_or("")
}

/// Per-key metadata read from a CSV file whose first column is the key (relative to the images'
/// root) and whose header names the other columns.
#[derive(Debug, Default, Clone)]
pub struct MetadataTable {
    rows: HashMap<String, Map<String, Value>>,
}

/// Why a metadata CSV cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// It cannot be read or parsed.
    #[error("cannot read metadata CSV {0}: {1}")]
    Read(String, #[source] csv::Error),
    /// It has no key column, or a row is unusable.
    #[error("metadata CSV {0}: {1}")]
    Invalid(String, String),
}

impl MetadataTable {
    /// Reads a CSV file whose first column (or `key` column) names the item.
    pub fn load(path: &Path) -> Result<Self, MetadataError> {
        let shown = path.display().to_string();
        let mut reader =
            csv::Reader::from_path(path).map_err(|e| MetadataError::Read(shown.clone(), e))?;
        Self::from_reader(&mut reader, &shown)
    }

    /// Parses CSV text (see [`MetadataTable::load`]).
    pub fn from_csv_str(text: &str) -> Result<Self, MetadataError> {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        Self::from_reader(&mut reader, "<string>")
    }

    fn from_reader<R: std::io::Read>(
        reader: &mut csv::Reader<R>,
        shown: &str,
    ) -> Result<Self, MetadataError> {
        let headers = reader
            .headers()
            .map_err(|e| MetadataError::Read(shown.into(), e))?
            .clone();
        if headers.is_empty() {
            return Err(MetadataError::Invalid(
                shown.into(),
                "empty header; expected key,field,...".into(),
            ));
        }
        let mut rows = HashMap::new();
        for (line, record) in reader.records().enumerate() {
            let record = record.map_err(|e| MetadataError::Read(shown.into(), e))?;
            let key = record
                .get(0)
                .unwrap_or("")
                .trim()
                .trim_start_matches('/')
                .to_string();
            if key.is_empty() {
                return Err(MetadataError::Invalid(
                    shown.into(),
                    format!("row {} has an empty key", line + 2),
                ));
            }
            let fields: Map<String, Value> = headers
                .iter()
                .zip(record.iter())
                .skip(1)
                .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
                .collect();
            rows.insert(key, fields);
        }
        Ok(MetadataTable { rows })
    }

    /// The same table with `prefix` put before every key: a CSV whose keys are relative to
    /// `s3://bucket/prefix` serves items whose keys are bucket-relative.
    pub fn under(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        let rows = self
            .rows
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect();
        MetadataTable { rows }
    }

    /// The metadata of `key`.
    pub fn get(&self, key: &str) -> Option<&Map<String, Value>> {
        self.rows.get(key)
    }

    /// Number of keys with metadata.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no key has metadata.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_is_the_parent_folder() {
        assert_eq!(category_of("catalog/shoes/123.jpg"), "shoes");
        assert_eq!(category_of("shoes/1.jpg"), "shoes");
        assert_eq!(category_of("1.jpg"), "");
    }

    #[test]
    fn csv_rows_become_metadata() {
        let t = MetadataTable::from_csv_str(
            "key,price,brand\nshoes/1.jpg,10,acme\n/hat/2.jpg,5,\"b, c\"\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("shoes/1.jpg").unwrap()["brand"], "acme");
        assert_eq!(t.get("hat/2.jpg").unwrap()["brand"], "b, c");
        assert!(MetadataTable::from_csv_str("key,a\n,1\n").is_err());
    }
}
