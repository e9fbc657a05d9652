//! SHA-256 in hex, of bytes, of a reader and of a file: the local store's ETags and the segment
//! cache's checksums (the manifest records every segment's sha256).

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Buffer size of the streamed copies.
const COPY_BUF: usize = 1 << 20;

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    hash_reader(&mut file, None).map(|(_, hash)| hash)
}

/// Reads `r` to the end, hashing it; optionally keeps the bytes. Returns (size, hex hash).
pub fn hash_reader(r: &mut impl Read, keep: Option<&mut Vec<u8>>) -> io::Result<(u64, String)> {
    match keep {
        Some(buf) => copy_hashing(r, buf),
        None => copy_hashing(r, &mut io::sink()),
    }
}

/// Copies `r` into `w`, hashing what passes. Returns (size, hex hash).
pub fn copy_hashing(r: &mut impl Read, w: &mut impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_ways_agree() {
        let data = vec![7u8; 3 * COPY_BUF / 2];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let mut kept = Vec::new();
        let (size, hash) = hash_reader(&mut &data[..], Some(&mut kept)).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(kept, data);
        assert_eq!(hash, sha256_hex(&data));
        assert_eq!(sha256_file(&path).unwrap(), hash);
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
