//! One side of a connection as a stream of messages: buffers a message's
//! head until it is complete, skips its body (captured or not), and loses
//! and regains sync when a capture gap cuts into a head.
//!
//! A head that arrives in many small transfers is not read again from its
//! start each time: the protocol's head reader keeps a scan state (`S`)
//! between calls for the same message, so a head costs time linear in its
//! length however it is cut.

use crate::{Chunk, ParserStats};

/// The most bytes of one message head kept while waiting for the rest.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Head buffer capacity kept once the buffer is empty.
const IDLE_BUF: usize = 4096;

/// What a protocol's head parser says about the bytes at the front.
pub(crate) enum Frame<M> {
    /// More bytes are needed.
    Incomplete,
    /// Not a valid message: the side loses sync until a transfer starts with one.
    Invalid,
    /// A message whose head is `head` bytes long, followed by `body` bytes
    /// (`u64::MAX`: until the connection ends).
    Message { head: usize, body: u64, msg: M },
}

/// A message with its body done.
pub(crate) struct Completed<M> {
    pub msg: M,
    pub start_ns: u64,
    /// The TCP sequence number of the message's first byte, when the
    /// capture gave the transfers' numbers.
    pub start_seq: Option<u32>,
    pub end_ns: u64,
    pub size: u64,
    pub truncated: bool,
}

struct InBody<M> {
    msg: M,
    start_ns: u64,
    start_seq: Option<u32>,
    size: u64,
    truncated: bool,
}

pub(crate) struct SideStream<M, S = ()> {
    buf: Vec<u8>,
    /// The head reader's progress on the message at the front of `buf`.
    scan: S,
    /// Body bytes still to pass over.
    skip: u64,
    in_body: Option<InBody<M>>,
    /// When the first byte now in `buf` arrived.
    buf_start_ns: u64,
    /// The sequence number of the first byte now in `buf`.
    buf_start_seq: Option<u32>,
    lost_sync: bool,
    pub stats: ParserStats,
}

impl<M, S: Default> Default for SideStream<M, S> {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            scan: S::default(),
            skip: 0,
            in_body: None,
            buf_start_ns: 0,
            buf_start_seq: None,
            lost_sync: false,
            stats: ParserStats::default(),
        }
    }
}

impl<M, S: Default> SideStream<M, S> {
    /// Bytes of memory held for partial heads.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Feeds one transfer. `parse` reads a head at the front of the bytes it
    /// is given, resuming from its scan state (fresh for each message);
    /// `starts_message` says whether a transfer may begin a message (to
    /// regain sync); `done` gets each message once its body is over.
    pub(crate) fn feed(
        &mut self,
        chunk: Chunk<'_>,
        mut parse: impl FnMut(&[u8], &mut S) -> Frame<M>,
        starts_message: impl Fn(&[u8]) -> bool,
        mut done: impl FnMut(Completed<M>),
    ) {
        let ts = chunk.ts_ns;
        let missing = chunk.missing();
        let mut bytes = chunk.bytes;
        if self.lost_sync {
            if !starts_message(bytes) {
                return;
            }
            self.lost_sync = false;
        }
        // The body of the message in progress comes first.
        let k = self.skip.min(bytes.len() as u64);
        self.pass_body(k);
        bytes = bytes.get(k as usize..).unwrap_or_default();
        if self.skip == 0 {
            self.finish_body(ts, &mut done);
        } else {
            self.gap(missing, ts, &mut done);
            return;
        }
        if self.buf.is_empty() {
            self.buf_start_ns = ts;
            self.buf_start_seq = chunk.seq.map(|s| s.wrapping_add(k as u32));
        }
        if self.buf.len() + bytes.len() > MAX_HEAD {
            self.stats.parse_errors += 1;
            self.desync();
            return;
        }
        // With nothing buffered, heads are read from the transfer itself:
        // only what is left of it is copied.
        let mut buf = std::mem::take(&mut self.buf);
        let from_chunk = buf.is_empty();
        if !from_chunk {
            buf.extend_from_slice(bytes);
        }
        let data: &[u8] = if from_chunk { bytes } else { &buf };
        let mut at = 0;
        while let Some(front) = data.get(at..).filter(|f| !f.is_empty()) {
            match parse(front, &mut self.scan) {
                Frame::Incomplete => break,
                Frame::Invalid => {
                    self.stats.parse_errors += 1;
                    self.desync();
                    return;
                }
                Frame::Message { head, body, msg } => {
                    self.scan = S::default();
                    let head = head.max(1).min(data.len() - at);
                    let start_seq = self.buf_start_seq.map(|s| s.wrapping_add(at as u32));
                    at += head;
                    self.in_body = Some(InBody {
                        msg,
                        start_ns: self.buf_start_ns,
                        start_seq,
                        size: head as u64,
                        truncated: false,
                    });
                    self.skip = body;
                    let from_buf = body.min((data.len() - at) as u64);
                    self.pass_body(from_buf);
                    at += from_buf as usize;
                    self.buf_start_ns = ts;
                    if self.skip > 0 {
                        break;
                    }
                    self.finish_body(ts, &mut done);
                }
            }
        }
        if from_chunk {
            buf.extend_from_slice(bytes.get(at..).unwrap_or_default());
        } else {
            buf.drain(..at);
        }
        self.buf = buf;
        self.buf_start_seq = self.buf_start_seq.map(|s| s.wrapping_add(at as u32));
        if self.buf.is_empty() && self.buf.capacity() > IDLE_BUF {
            // An idle connection keeps no large head buffer.
            self.buf = Vec::new();
        }
        if missing > 0 {
            if self.buf.is_empty() && self.skip > 0 {
                self.gap(missing, ts, &mut done);
            } else {
                // The gap cut into a head: what follows cannot be framed.
                self.desync();
            }
        }
    }

    /// `missing` bytes were not captured while a body is being passed over.
    fn gap(&mut self, missing: u64, ts: u64, done: &mut impl FnMut(Completed<M>)) {
        if missing == 0 {
            return;
        }
        let g = self.skip.min(missing);
        self.pass_body(g);
        if let Some(b) = self.in_body.as_mut() {
            b.truncated = true;
        }
        if self.skip == 0 {
            self.finish_body(ts, done);
        }
        if missing > g {
            self.desync();
        }
    }

    /// Passes `n` body bytes (at most `skip`); a body to the end never runs out.
    fn pass_body(&mut self, n: u64) {
        if self.skip != u64::MAX {
            self.skip -= n;
        }
        if let Some(b) = self.in_body.as_mut() {
            b.size = b.size.saturating_add(n);
        }
    }

    fn finish_body(&mut self, ts_ns: u64, done: &mut impl FnMut(Completed<M>)) {
        if let Some(b) = self.in_body.take() {
            done(Completed {
                msg: b.msg,
                start_ns: b.start_ns,
                start_seq: b.start_seq,
                end_ns: ts_ns,
                size: b.size,
                truncated: b.truncated,
            });
        }
    }

    fn desync(&mut self) {
        self.scan = S::default();
        self.stats.desyncs += 1;
        self.lost_sync = true;
        self.buf.clear();
        self.skip = 0;
        self.in_body = None;
    }

    /// The connection ended: a body that ran to the end is over; one cut short is truncated.
    pub(crate) fn finish(&mut self, ts_ns: u64, mut done: impl FnMut(Completed<M>)) {
        if self.skip != u64::MAX
            && let Some(b) = self.in_body.as_mut()
        {
            b.truncated = true;
        }
        self.finish_body(ts_ns, &mut done);
        self.skip = 0;
    }
}
