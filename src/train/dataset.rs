//! The training set: images sorted into category folders (the folder an image is in is its
//! label, as everywhere in lookalike), and its per-category split into training, validation and
//! held-out test images.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::catalog::{category_of, is_image_name};
use crate::store::{ObjectStore, StoreError};

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The image's key in the store.
    pub key: String,
    /// Index into [`Dataset::categories`].
    pub label: usize,
}

/// Labelled images of a folder or S3 prefix.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder or S3 prefix the images are in.
    pub location: String,
    /// Category names, sorted; labels index into this.
    pub categories: Vec<String>,
    /// Sorted by key.
    pub examples: Vec<Example>,
    /// Files that are not images by name, or images at the root (no category folder).
    pub ignored: usize,
}

/// Why the labelled images cannot be trained on.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The images could not be listed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Fewer than 2 category folders hold images.
    #[error("{location} has {found} categories with images; training needs at least 2 category folders (found: {names:?})")]
    TooFewCategories {
        /// The folder or S3 prefix.
        location: String,
        /// How many categories have images.
        found: usize,
        /// Their names.
        names: Vec<String>,
    },
    /// A category has too few images for the split.
    #[error("category {category:?} has {count} images; every category needs at least {min} for this split")]
    TooFewImages {
        /// The category.
        category: String,
        /// Its images.
        count: usize,
        /// The fewest the split needs.
        min: usize,
    },
    /// A split fraction is outside [0, 1).
    #[error("invalid split: the {0}")]
    BadSplit(SplitFraction),
}

/// A fraction of a split, named by the part it sets aside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitFraction {
    /// The fraction of each category used for early stopping.
    Validation(f64),
    /// The fraction of each category held out as test images.
    Test(f64),
}

impl std::fmt::Display for SplitFraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (part, value) = match self {
            SplitFraction::Validation(v) => ("validation", v),
            SplitFraction::Test(v) => ("test", v),
        };
        write!(f, "{part} fraction {value} must be at least 0 and below 1")
    }
}

impl Dataset {
    /// Lists the images of `store`; an image's category is the name of its folder.
    pub async fn list(store: &dyn ObjectStore) -> Result<Self, DatasetError> {
        let objects = store.list("").await?;
        let total = objects.len();
        let mut by_category: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for o in objects {
            let category = category_of(&o.key);
            if is_image_name(&o.key) && !category.is_empty() {
                by_category
                    .entry(category.to_string())
                    .or_default()
                    .push(o.key);
            }
        }
        let categories: Vec<String> = by_category.keys().cloned().collect();
        if categories.len() < 2 {
            return Err(DatasetError::TooFewCategories {
                location: store.location(),
                found: categories.len(),
                names: categories,
            });
        }
        let mut examples: Vec<Example> = by_category
            .into_values()
            .enumerate()
            .flat_map(|(label, keys)| keys.into_iter().map(move |key| Example { key, label }))
            .collect();
        examples.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Dataset {
            location: store.location(),
            ignored: total - examples.len(),
            categories,
            examples,
        })
    }

    /// Images per category.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.categories.len()];
        for e in &self.examples {
            c[e.label] += 1;
        }
        c
    }

    /// Splits every category on its own: a `test` fraction held out (never trained on nor used for
    /// early stopping), then a `val` fraction of the rest for early stopping; the remainder trains.
    /// The same seed always gives the same split. Every category keeps at least 2 training images,
    /// and at least 2 validation (and test) images when that fraction is not zero.
    pub fn split(&self, val: f64, test: f64, seed: u64) -> Result<Split, DatasetError> {
        for (f, fraction) in [
            (val, SplitFraction::Validation(val)),
            (test, SplitFraction::Test(test)),
        ] {
            if !(0.0..1.0).contains(&f) {
                return Err(DatasetError::BadSplit(fraction));
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut split = Split::default();
        for (label, category) in self.categories.iter().enumerate() {
            let mut idx: Vec<usize> = (0..self.examples.len())
                .filter(|&i| self.examples[i].label == label)
                .collect();
            idx.shuffle(&mut rng);
            let n = idx.len();
            let part = |f: f64, of: usize| -> usize {
                if f == 0.0 {
                    0
                } else {
                    ((of as f64 * f).round() as usize).max(2)
                }
            };
            let n_test = part(test, n);
            let n_val = part(val, n - n_test.min(n));
            let min = n_test + n_val + 2;
            if n < min {
                return Err(DatasetError::TooFewImages {
                    category: category.clone(),
                    count: n,
                    min,
                });
            }
            split.test.extend(&idx[..n_test]);
            split.val.extend(&idx[n_test..n_test + n_val]);
            split.train.extend(&idx[n_test + n_val..]);
        }
        for part in [&mut split.train, &mut split.val, &mut split.test] {
            part.sort_unstable();
        }
        Ok(split)
    }
}

/// Indices into [`Dataset::examples`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Split {
    /// The images trained on.
    pub train: Vec<usize>,
    /// The images used for early stopping.
    pub val: Vec<usize>,
    /// The images held out.
    pub test: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(per_category: &[usize]) -> Dataset {
        let categories: Vec<String> = (0..per_category.len()).map(|i| format!("c{i}")).collect();
        let examples = per_category
            .iter()
            .enumerate()
            .flat_map(|(label, &n)| {
                (0..n).map(move |i| Example {
                    key: format!("c{label}/{i:03}.jpg"),
                    label,
                })
            })
            .collect();
        Dataset {
            location: "mem".into(),
            categories,
            examples,
            ignored: 0,
        }
    }

    #[test]
    fn splits_each_category_disjointly_and_reproducibly() {
        let d = dataset(&[60, 60, 10]);
        let s = d.split(0.2, 0.5, 7).unwrap();
        assert_eq!(s, d.split(0.2, 0.5, 7).unwrap());
        assert_ne!(s, d.split(0.2, 0.5, 8).unwrap());
        let mut all: Vec<usize> = [&s.train, &s.val, &s.test]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..d.examples.len()).collect::<Vec<_>>());
        let count = |part: &[usize], label: usize| {
            part.iter()
                .filter(|&&i| d.examples[i].label == label)
                .count()
        };
        assert_eq!(
            (count(&s.test, 0), count(&s.val, 0), count(&s.train, 0)),
            (30, 6, 24)
        );
        assert_eq!(
            (count(&s.test, 2), count(&s.val, 2), count(&s.train, 2)),
            (5, 2, 3)
        );
    }

    #[test]
    fn too_small_categories_and_bad_fractions_are_refused() {
        let d = dataset(&[60, 3]);
        let err = d.split(0.2, 0.5, 1).unwrap_err();
        assert!(err.to_string().contains("\"c1\" has 3 images"), "{err}");
        assert!(d.split(0.0, 0.0, 1).is_ok());
        assert!(matches!(
            d.split(1.0, 0.0, 1),
            Err(DatasetError::BadSplit(_))
        ));
        assert!(matches!(
            d.split(0.2, -0.1, 1),
            Err(DatasetError::BadSplit(_))
        ));
    }
}
