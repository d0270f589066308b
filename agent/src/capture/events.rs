//! Decoding of the records the eBPF programs put in the ring buffer.

use std::{mem::size_of, ptr};

use tangle_common::{ConnEvent, DataHeader, EventKind};

/// One record from the ring buffer. Data borrows the record's bytes: no copy,
/// no allocation.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    Open(ConnEvent),
    Close(ConnEvent),
    Data(DataHeader, &'a [u8]),
}

/// A record that does not decode (a kernel/userspace version mismatch, or a
/// corrupted buffer). Counted by the reader, never fatal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is empty.
    #[error("empty record")]
    Empty,
    /// The first byte is no known event kind.
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    /// The record is shorter than its kind's fixed part, or than its header says.
    #[error("{kind:?} record of {len} bytes is truncated")]
    Truncated { kind: EventKind, len: usize },
}

/// Copies a `T` out of the front of `bytes`, if it is long enough.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes and T is a
    // #[repr(C)] plain-data type for which any bit pattern is valid.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let &first = record.first().ok_or(DecodeError::Empty)?;
    let kind = EventKind::from_u8(first).ok_or(DecodeError::UnknownKind(first))?;
    let truncated = DecodeError::Truncated {
        kind,
        len: record.len(),
    };
    match kind {
        EventKind::ConnOpen => read::<ConnEvent>(record).map(Event::Open).ok_or(truncated),
        EventKind::ConnClose => read::<ConnEvent>(record).map(Event::Close).ok_or(truncated),
        EventKind::Data => {
            let header = read::<DataHeader>(record).ok_or(truncated.clone())?;
            let start = size_of::<DataHeader>();
            let bytes = record
                .get(start..start + header.captured_len as usize)
                .ok_or(truncated)?;
            Ok(Event::Data(header, bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value.
        unsafe { std::slice::from_raw_parts(ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn data_record_round_trip() {
        let header = DataHeader {
            kind: EventKind::Data as u8,
            captured_len: 5,
            total_len: 9000,
            ..DataHeader::default()
        };
        let mut rec = as_bytes(&header);
        rec.extend_from_slice(b"hello");
        match decode(&rec) {
            Ok(Event::Data(h, bytes)) => {
                assert_eq!(h.total_len, 9000);
                assert_eq!(bytes, b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(&[77]).unwrap_err(), DecodeError::UnknownKind(77));
        assert!(matches!(
            decode(&[1, 0, 0]),
            Err(DecodeError::Truncated { .. })
        ));
        let header = DataHeader {
            kind: EventKind::Data as u8,
            captured_len: 100, // claims more bytes than follow
            ..DataHeader::default()
        };
        let mut rec = as_bytes(&header);
        rec.extend_from_slice(b"short");
        assert!(matches!(decode(&rec), Err(DecodeError::Truncated { .. })));
    }
}
