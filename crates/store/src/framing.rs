//! The framing both on-disk formats of the embedded store share (the state file's journal and
//! the per-window ingest logs): a versioned file header, then checksummed records.
//!
//! ```text
//! file   := header record*
//! header := magic[8] version:u32 crc32c(magic ‖ version):u32                      (16 bytes)
//! record := len:u32 crc32c(payload):u32 crc32c(len ‖ crc32c(payload)):u32 payload[len]
//! ```
//! Little-endian. The length has a checksum of its own, so a damaged length is told apart from a
//! record cut short: a record whose header is whole and sound but whose payload runs past the
//! end of the file, a header cut short, or zeros to the end of the file (space a crash allocated
//! but never wrote) is a *torn tail*: the last write never finished, so it was never
//! acknowledged, and the file is cut back to the last whole record before anything is appended.
//! Any other mismatch is *damage*: [`StoreError::Corrupt`] names the file and the offset, and
//! nothing is changed, since dropping a record that was acknowledged would lose it silently.

use std::path::Path;

use crate::StoreError;

pub(crate) const FILE_HEADER_LEN: usize = 16;
pub(crate) const RECORD_HEADER_LEN: usize = 12;
/// No record is larger: a sound header asking for more is damage, not a record.
pub(crate) const MAX_RECORD_LEN: usize = 1 << 30;

/// Which format a file holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Format {
    pub magic: &'static [u8; 8],
    pub version: u32,
    /// What the file is, for errors ("ingest log", "state file").
    pub what: &'static str,
}

pub(crate) fn file_header(format: Format) -> [u8; FILE_HEADER_LEN] {
    let mut out = [0u8; FILE_HEADER_LEN];
    out[..8].copy_from_slice(format.magic);
    out[8..12].copy_from_slice(&format.version.to_le_bytes());
    let crc = crc32c::crc32c(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Appends one framed record holding `payload` to `out`.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if payload.len() > MAX_RECORD_LEN {
        return Err(format!(
            "a record of {} bytes is over the {MAX_RECORD_LEN}-byte limit",
            payload.len()
        ));
    }
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c(payload).to_le_bytes();
    let head = crc32c::crc32c_append(crc32c::crc32c(&len), &crc).to_le_bytes();
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Ok(())
}

pub(crate) fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: path.display().to_string(),
        offset,
        detail: detail.into(),
    }
}

/// What a file's bytes hold.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    /// Every whole record: its offset in the file and its payload.
    pub records: Vec<(u64, &'a [u8])>,
    /// Where the last whole record ends: the file is to be cut here when `torn` is set.
    pub valid_len: u64,
    /// The file goes on past `valid_len` with a write that never finished.
    pub torn: bool,
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Reads a file's header and records, telling a torn tail from damage (module docs).
pub(crate) fn scan<'a>(
    path: &Path,
    bytes: &'a [u8],
    format: Format,
) -> Result<Scan<'a>, StoreError> {
    let expected = file_header(format);
    if bytes.len() < FILE_HEADER_LEN {
        // A creation cut short leaves a prefix of the header, or zeros.
        if expected.starts_with(bytes) || all_zero(bytes) {
            // No header yet (new, or its creation cut short): written again from the start.
            return Ok(Scan {
                records: Vec::new(),
                valid_len: 0,
                torn: !bytes.is_empty(),
            });
        }
        return Err(corrupt(
            path,
            0,
            format!(
                "not a billing-bridge {}: its header is damaged",
                format.what
            ),
        ));
    }
    let header = &bytes[..FILE_HEADER_LEN];
    if header[..8] != format.magic[..] {
        return Err(corrupt(
            path,
            0,
            format!("not a billing-bridge {} (unknown header)", format.what),
        ));
    }
    if crc32c::crc32c(&header[..12]).to_le_bytes() != header[12..16] {
        return Err(corrupt(path, 8, "the header's checksum does not match"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != format.version {
        return Err(corrupt(
            path,
            8,
            format!(
                "format version {version}, this release reads version {}: run the release that wrote it, or a newer one",
                format.version
            ),
        ));
    }
    let mut records = Vec::new();
    let mut at = FILE_HEADER_LEN;
    loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            return Ok(Scan {
                records,
                valid_len: at as u64,
                torn: false,
            });
        }
        let torn = Scan {
            records: Vec::new(),
            valid_len: at as u64,
            torn: true,
        };
        if rest.len() < RECORD_HEADER_LEN || all_zero(rest) {
            return Ok(Scan { records, ..torn });
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        let crc_bytes: [u8; 4] = rest[4..8].try_into().expect("4 bytes");
        let head = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &crc_bytes);
        if head.to_le_bytes() != rest[8..12] {
            return Err(corrupt(
                path,
                at as u64,
                "a record header's checksum does not match",
            ));
        }
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_RECORD_LEN {
            return Err(corrupt(
                path,
                at as u64,
                format!("a record claims {len} bytes, over the {MAX_RECORD_LEN}-byte limit"),
            ));
        }
        let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
            return Ok(Scan { records, ..torn });
        };
        if crc32c::crc32c(payload).to_le_bytes() != crc_bytes {
            return Err(corrupt(
                path,
                at as u64,
                "a record's checksum does not match",
            ));
        }
        records.push((at as u64, payload));
        at += RECORD_HEADER_LEN + len;
    }
}

/// Reads the little-endian fields of a record's payload; every read says what it wanted.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let part = self
            .bytes
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| {
                format!(
                    "the record ends at byte {} of its payload where {n} more were expected",
                    self.bytes.len()
                )
            })?;
        self.at += n;
        Ok(part)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }

    pub fn done(&self) -> Result<(), String> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!(
                "{} bytes are left over after the record's fields",
                self.bytes.len() - self.at
            ))
        }
    }
}

/// Writes a string as `u32 length` then its bytes; a string too long for that is an error, never
/// cut.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    let len = u32::try_from(s.len())
        .map_err(|_| format!("a field of {} bytes is too long to store", s.len()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: Format = Format {
        magic: b"BBTEST\0\0",
        version: 3,
        what: "test file",
    };

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = file_header(FORMAT).to_vec();
        for p in payloads {
            frame(p, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn whole_records_are_read_back_and_a_cut_one_is_a_torn_tail() {
        let bytes = file(&[b"one", b"", b"three"]);
        let path = Path::new("f");
        let scan = scan(path, &bytes, FORMAT).unwrap();
        let payloads: Vec<&[u8]> = scan.records.iter().map(|r| r.1).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert!(!scan.torn);
        let cut = &bytes[..bytes.len() - 1];
        let scan = super::scan(path, cut, FORMAT).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert!(scan.torn);
        assert_eq!(scan.valid_len as usize, bytes.len() - RECORD_HEADER_LEN - 5);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail_and_a_flipped_length_is_damage() {
        let mut bytes = file(&[b"one"]);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 40]);
        let scan = scan(Path::new("f"), &bytes, FORMAT).unwrap();
        assert_eq!(
            (scan.records.len(), scan.valid_len, scan.torn),
            (1, end, true)
        );
        let mut bytes = file(&[b"one", b"two"]);
        bytes[FILE_HEADER_LEN] ^= 0x40;
        let error = super::scan(Path::new("f"), &bytes, FORMAT).unwrap_err();
        assert_eq!(
            error,
            StoreError::Corrupt {
                file: "f".into(),
                offset: FILE_HEADER_LEN as u64,
                detail: "a record header's checksum does not match".into()
            }
        );
    }

    #[test]
    fn a_header_cut_short_is_an_empty_file_and_another_version_is_refused() {
        let header = file_header(FORMAT);
        for n in 0..FILE_HEADER_LEN {
            let scan = scan(Path::new("f"), &header[..n], FORMAT).unwrap();
            assert!(scan.records.is_empty() && scan.valid_len == 0);
        }
        // A whole header of zeros is damage here; the ingest log decides otherwise for its own
        // files (see ingest.rs).
        assert!(scan(Path::new("f"), &[0u8; 64], FORMAT).is_err());
        let newer = Format {
            version: 4,
            ..FORMAT
        };
        let error = scan(Path::new("f"), &file_header(newer), FORMAT).unwrap_err();
        assert!(error.to_string().contains("version 4"), "{error}");
    }
}
