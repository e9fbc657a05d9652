//! Why a segment cannot be written or read (shared by the segment file and its vectors).

/// Why a segment cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// LMDB failed.
    #[error("LMDB error on segment {0}: {1}")]
    Lmdb(String, #[source] heed::Error),
    /// arroy failed.
    #[error("arroy error on segment {0}: {1}")]
    Arroy(String, #[source] arroy::Error),
    /// A file operation failed.
    #[error("I/O error on segment {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The file is not a segment of this format.
    #[error("segment {0} is not a lookalike segment: {1}")]
    Invalid(String, String),
    /// A vector of the wrong size.
    #[error("embedding of {key} has {got} dimensions, the index has {want}")]
    Dims {
        /// The item's key.
        key: String,
        /// The vector's dimensions.
        got: usize,
        /// The segment's.
        want: usize,
    },
}
