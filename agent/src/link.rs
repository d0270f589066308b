//! Links outbound calls to the inbound request they serve: by propagated
//! context (`traceparent`, B3), or by the thread rule: a call made by the
//! thread that is serving an inbound request, between the request's start
//! and the response's end, belongs to it (thread-per-request servers). Such
//! calls are held until the request they may belong to completes (at most
//! [`HOLD`]; past it they go out marked `tangle.link.lost`); any other
//! span starts its own trace.

use std::time::Duration;

use tangle_common::Role;

use crate::{
    connections::Connection,
    spans::{Outgoing, SpanRecord, TraceId},
};

/// How long an outbound call waits for the inbound request it may belong
/// to: longer than a slow request (a loaded service answers in seconds),
/// shorter than the collector's trace window (8 s by default).
pub const HOLD: Duration = Duration::from_secs(5);
/// Outbound calls held at once, at most (past it the oldest go out
/// unlinked): 500 requests in flight making 30 calls each.
const MAX_HELD: usize = 16_384;
/// Outbound calls one process may have held: one that serves a request it
/// never answers while it calls out cannot push the others' calls out.
const MAX_HELD_PER_PROCESS: usize = MAX_HELD / 4;

struct Held {
    pid: u32,
    tid: u32,
    /// The propagated trace id the call carried, if any.
    context: Option<TraceId>,
    start_ns: u64,
    end_ns: u64,
    held_at: std::time::Instant,
    out: Outgoing,
}

/// One call of `pid`'s no longer held.
fn release(held_by: &mut std::collections::HashMap<u32, usize>, pid: u32) {
    if let Some(n) = held_by.get_mut(&pid) {
        *n -= 1;
        if *n == 0 {
            held_by.remove(&pid);
        }
    }
}

/// Links outbound calls to the inbound request their thread was serving.
/// A thread seen serving two requests at once (an async runtime) is not
/// thread-per-request: its links are marked inferred from then on, never
/// presented as exact.
#[derive(Default)]
pub struct Linker {
    held: std::collections::VecDeque<Held>,
    /// Per (pid, tid): the last requests served, as (start, end).
    served: std::collections::HashMap<(u32, u32), std::collections::VecDeque<(u64, u64)>>,
    /// Threads seen serving overlapping requests.
    multiplexed: std::collections::HashSet<(u32, u32)>,
    /// Per (pid, tid): server connections it read a request on that is not
    /// answered yet. A second one means the thread multiplexes, known before
    /// the first request completes (its links would otherwise pass as exact).
    reading: std::collections::HashMap<(u32, u32), Vec<u64>>,
    /// Connection id to the thread in `reading`.
    reader_of: std::collections::HashMap<u64, (u32, u32)>,
    /// Per pid: entries in `reading`, i.e. requests it is serving now.
    serving: std::collections::HashMap<u32, usize>,
    /// Per pid: its calls in `held`.
    held_by: std::collections::HashMap<u32, usize>,
}

impl Linker {
    /// Calls held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Thread `tid` read request bytes on server connection `conn`.
    pub fn inbound_read(&mut self, conn: &Connection, tid: u32) {
        let thread = (conn.pid, tid);
        if self.reader_of.get(&conn.conn_id) == Some(&thread) {
            return;
        }
        self.answered(conn.conn_id);
        let open = self.reading.entry(thread).or_default();
        if !open.is_empty() {
            if self.multiplexed.len() >= 65_536 {
                // Bounded; a thread still multiplexing is found again at once.
                self.multiplexed.clear();
            }
            self.multiplexed.insert(thread);
        }
        if open.len() < 64 {
            open.push(conn.conn_id);
            self.reader_of.insert(conn.conn_id, thread);
            *self.serving.entry(conn.pid).or_default() += 1;
        }
        if self.reader_of.len() > 65_536 {
            self.reading.clear();
            self.reader_of.clear();
            self.serving.clear();
        }
    }

    /// Connection `conn_id` has no request waiting any more (answered or closed).
    pub fn answered(&mut self, conn_id: u64) {
        let Some(thread) = self.reader_of.remove(&conn_id) else {
            return;
        };
        if let Some(open) = self.reading.get_mut(&thread) {
            open.retain(|&c| c != conn_id);
            if open.is_empty() {
                self.reading.remove(&thread);
            }
        }
        if let Some(n) = self.serving.get_mut(&thread.0) {
            *n -= 1;
            if *n == 0 {
                self.serving.remove(&thread.0);
            }
        }
    }

    /// Takes one exchange's span; returns the spans ready to go.
    pub fn exchange(&mut self, conn: &Connection, tid: u32, mut span: SpanRecord) -> Vec<Outgoing> {
        let out = |span| Outgoing {
            identity: conn.identity.clone(),
            span,
        };
        if conn.role == Role::Client {
            let context = span.context();
            // Only a call made while its thread (or, with a propagated
            // context, its process) serves a request can belong to one:
            // pure clients' calls go out at once, not held for nothing.
            let may_belong = self.reading.contains_key(&(conn.pid, tid))
                || (context.is_some() && self.serving.contains_key(&conn.pid));
            if !may_belong {
                let mut ready = vec![out(span)];
                ready.extend(self.expired(false));
                return ready;
            }
            let mine = self.held_by.entry(conn.pid).or_default();
            if *mine >= MAX_HELD_PER_PROCESS {
                // Past its share: this call goes out now, its link lost.
                span.link_lost = true;
                let mut ready = vec![out(span)];
                ready.extend(self.expired(false));
                return ready;
            }
            *mine += 1;
            self.held.push_back(Held {
                pid: conn.pid,
                tid,
                context,
                start_ns: span.start_ns,
                end_ns: span.end_ns,
                held_at: std::time::Instant::now(),
                out: out(span),
            });
            return self.expired(false);
        }
        let thread = (conn.pid, tid);
        self.answered(conn.conn_id);
        let (start_ns, end_ns) = (span.start_ns, span.end_ns);
        let recent = self.served.entry(thread).or_default();
        if recent.iter().any(|&(s, end)| start_ns < end && s < end_ns) {
            self.multiplexed.insert(thread);
        }
        if recent.len() >= 8 {
            recent.pop_front();
        }
        recent.push_back((start_ns, end_ns));
        if self.served.len() > 65_536 {
            self.served.clear();
        }
        let multiplexed = self.multiplexed.contains(&thread);
        let context = span.context();
        // Its children: calls carrying its propagated trace id (exact), or
        // made by its thread meanwhile (the thread rule).
        let (trace_id, span_id) = (span.trace_id, span.span_id);
        let mut children = Vec::new();
        for mut h in std::mem::take(&mut self.held) {
            let by_context = context.is_some() && h.pid == conn.pid && h.context == context;
            let by_thread =
                h.pid == conn.pid && h.tid == tid && h.start_ns >= start_ns && h.end_ns <= end_ns;
            if by_context || (by_thread && (h.context.is_none() || context.is_none())) {
                h.out.span.trace_id = trace_id;
                h.out.span.parent_span_id = Some(span_id);
                h.out.span.link_inferred = multiplexed && !by_context;
                release(&mut self.held_by, h.pid);
                children.push(h.out);
            } else {
                self.held.push_back(h);
            }
        }
        span.children = children.len() as u32;
        let mut ready = vec![out(span)];
        ready.append(&mut children);
        ready.extend(self.expired(false));
        ready
    }

    /// Held calls whose time is up (or all of them).
    pub fn expired(&mut self, all: bool) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(h) = self.held.front() {
            if !all && h.held_at.elapsed() < HOLD && self.held.len() <= MAX_HELD {
                break;
            }
            if let Some(mut h) = self.held.pop_front() {
                release(&mut self.held_by, h.pid);
                // Made while its thread served a request that did not end
                // in time: its parent is unknown, not absent.
                h.out.span.link_lost = true;
                out.push(h.out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::tests::ex;
    use tangle_protocols::{Exchange, Fields};

    fn conn(role: Role, port: u16) -> Connection {
        Connection::sample(
            u64::from(port),
            role,
            &format!("127.0.0.1:{port}"),
            "127.0.0.1:80",
        )
    }

    fn inferred(s: &SpanRecord) -> bool {
        s.link_inferred
    }

    fn span(c: &Connection, e: Exchange) -> SpanRecord {
        SpanRecord::new(c, e, 0)
    }

    fn with_context(mut e: Exchange, tp: &str) -> Exchange {
        if let Fields::Http(h) = &mut e.fields {
            h.trace.traceparent = Some(tp.into());
        }
        e
    }

    #[test]
    fn propagated_context_links_exactly_even_on_an_event_loop() {
        let mut l = Linker::default();
        let (server, client) = (conn(Role::Server, 8080), conn(Role::Client, 40000));
        let t1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t2 = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
        // One thread, two overlapping requests, each call carrying its request's trace.
        let a = with_context(ex(10, 100), t1);
        let b = with_context(ex(20, 110), t2);
        let call_b = with_context(ex(30, 40), t2);
        let call_a = with_context(ex(50, 60), t1);
        l.inbound_read(&server, 1);
        assert!(l.exchange(&client, 1, span(&client, call_b)).is_empty());
        assert!(l.exchange(&client, 1, span(&client, call_a)).is_empty());
        let out_a = l.exchange(&server, 1, span(&server, a));
        let out_b = l.exchange(&server, 1, span(&server, b));
        assert_eq!(
            (out_a.len(), out_b.len()),
            (2, 2),
            "each request gets its own call, not the other's"
        );
        assert_eq!(
            out_a[0].span.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            out_a[0].span.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            "under the caller's span"
        );
        assert_eq!(out_a[1].span.parent_span_id, Some(out_a[0].span.span_id));
        assert_eq!(out_b[1].span.parent_span_id, Some(out_b[0].span.span_id));
        assert!(
            !inferred(&out_a[1].span) && !inferred(&out_b[1].span),
            "context links are exact"
        );
    }

    /// A process that serves a request it never answers while it calls
    /// out holds its share of calls, no more: others' calls are still held.
    #[test]
    fn one_process_cannot_push_out_the_others_held_calls() {
        let mut l = Linker::default();
        let server = conn(Role::Server, 8080);
        let client = conn(Role::Client, 40000);
        l.inbound_read(&server, 1);
        for i in 0..MAX_HELD_PER_PROCESS as u64 {
            let out = l.exchange(&client, 1, span(&client, ex(20 + i, 30 + i)));
            assert!(out.is_empty(), "held");
        }
        let out = l.exchange(&client, 1, span(&client, ex(20, 30)));
        assert_eq!(out.len(), 1, "past its share: out at once");
        assert!(out[0].span.link_lost);
        // Another process's call is held as ever.
        let (mut other_server, mut other_client) =
            (conn(Role::Server, 8081), conn(Role::Client, 40001));
        other_server.pid = 8;
        other_client.pid = 8;
        l.inbound_read(&other_server, 2);
        assert!(
            l.exchange(&other_client, 2, span(&other_client, ex(20, 30)))
                .is_empty()
        );
        // Its request ends: its call is its child, and the count goes down.
        let out = l.exchange(&other_server, 2, span(&other_server, ex(10, 100)));
        assert_eq!(out.len(), 2);
        assert_eq!(l.held_by.get(&8), None);
        assert_eq!(l.held_by.get(&7), Some(&MAX_HELD_PER_PROCESS));
    }

    #[test]
    fn thread_rule_exact_then_inferred_once_a_thread_multiplexes() {
        let mut l = Linker::default();
        let (a, b) = (conn(Role::Server, 8080), conn(Role::Server, 8081));
        let client = conn(Role::Client, 40000);
        let call = |l: &mut Linker, tid, w: (u64, u64)| {
            l.exchange(&client, tid, span(&client, ex(w.0, w.1)))
        };
        let serve = |l: &mut Linker, c: &Connection, tid, w: (u64, u64)| {
            l.exchange(c, tid, span(c, ex(w.0, w.1)))
        };
        // Thread 1 serves [10, 100] and calls out in [20, 30]: an exact child.
        l.inbound_read(&a, 1);
        assert!(call(&mut l, 1, (20, 30)).is_empty(), "held");
        let out = serve(&mut l, &a, 1, (10, 100));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].span.parent_span_id, Some(out[0].span.span_id));
        assert_eq!(out[1].span.trace_id, out[0].span.trace_id);
        assert!(!inferred(&out[1].span));
        // A call made while the thread serves nothing goes out at once, unlinked.
        let out = call(&mut l, 1, (150, 160));
        assert_eq!(out.len(), 1);
        assert!(out[0].span.parent_span_id.is_none());
        // Thread 2 serves two overlapping requests (an event loop) although it
        // read the second after answering the first: its links are inferred.
        l.inbound_read(&a, 2);
        let _ = serve(&mut l, &a, 2, (200, 300));
        l.inbound_read(&b, 2);
        assert!(call(&mut l, 2, (260, 270)).is_empty(), "held");
        let out = serve(&mut l, &b, 2, (250, 400));
        assert_eq!(out.len(), 2);
        assert!(
            inferred(&out[1].span),
            "a multiplexing thread's link is marked inferred"
        );
        // A held call nobody claims goes out when its time is up.
        l.inbound_read(&a, 3);
        assert!(call(&mut l, 3, (500, 510)).is_empty(), "held");
        let rest = l.expired(true);
        assert_eq!(rest.len(), 1);
        assert!(rest[0].span.parent_span_id.is_none());
    }

    #[test]
    fn a_thread_reading_two_requests_is_multiplexed_before_either_completes() {
        let mut l = Linker::default();
        let (a, b) = (conn(Role::Server, 8080), conn(Role::Server, 8081));
        let client = conn(Role::Client, 40000);
        // An event loop reads request A, then request B, then calls out for B.
        l.inbound_read(&a, 5);
        l.inbound_read(&b, 5);
        let call = ex(30, 40);
        assert!(l.exchange(&client, 5, span(&client, call)).is_empty());
        // A completes first: the call falls in its window, but the link
        // cannot be exact.
        let out = l.exchange(&a, 5, span(&a, ex(10, 100)));
        assert_eq!(out.len(), 2);
        assert!(inferred(&out[1].span));
        // A thread serving one connection after another stays exact.
        l.inbound_read(&a, 6);
        let _ = l.exchange(&a, 6, span(&a, ex(200, 300)));
        l.answered(a.conn_id);
        l.inbound_read(&b, 6);
        let call = ex(420, 430);
        let _ = l.exchange(&client, 6, span(&client, call));
        let out = l.exchange(&b, 6, span(&b, ex(400, 500)));
        assert_eq!(out.len(), 2);
        assert!(!inferred(&out[1].span));
    }
}
